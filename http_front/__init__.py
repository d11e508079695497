"""The thin aiohttp front: authenticate, parse, call `engine`, translate the answer. No rules."""
