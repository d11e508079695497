"""Dramatiq workers and the scheduler: thin actors that decode ids and call `engine`."""
