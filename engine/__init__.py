"""The SIR rewards engine's domain and use cases.

Nothing here imports aiohttp or dramatiq: the HTTP front and the workers are entrypoints that
translate into calls on this package. PostgreSQL is reached through SQLAlchemy Core.
"""
