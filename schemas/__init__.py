"""Wire models (pydantic): what crosses HTTP, camelCase, and the source of the OpenAPI document."""
