"""Baseline B's server: a trivial aiohttp handler, the HTTP ceiling of this machine in this run.

Run as its own process (`python -m ops.bench.ceiling_server --port P`), like `serve` is, so
the client and the server compete for the cores the same way in both measurements.
"""

from __future__ import annotations

import argparse

from aiohttp import web


async def ok(request: web.Request) -> web.Response:
    return web.Response(text="ok")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    app = web.Application()
    app.router.add_get("/", ok)
    web.run_app(app, host="127.0.0.1", port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
