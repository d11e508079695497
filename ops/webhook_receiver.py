"""A webhook receiver for trying the engine out (the README's quickstart), and the shape of one.

    SIR_WEBHOOK_SECRET=whsec_... python -m ops.webhook_receiver --port 9000

Listens on 127.0.0.1, verifies every delivery with `sir_client.parse_event` (contract 9: HMAC
of `X-SIR-Timestamp + "." + rawBody` with the whole `whsec_` secret, timestamp within 5
minutes), prints each verified event as one JSON line, and answers 200 (a 2xx within 5 s is
success). A delivery that does not verify gets 400 and a line on stderr; the engine retries it.
Deduplicate on the event `id` in a real receiver: delivery is at least once.
"""

from __future__ import annotations

import argparse
import os
import sys

from aiohttp import web

from engine.wire import dumps
from sir_client import WebhookSignatureError, parse_event


def make_app(secret: str, path: str = "/hooks") -> web.Application:
    async def receive(request: web.Request) -> web.Response:
        raw_body = await request.read()  # verify the bytes as received, before parsing
        try:
            event = parse_event(secret, request.headers, raw_body)
        except WebhookSignatureError as exc:
            print(f"refused a delivery: {exc}", file=sys.stderr, flush=True)
            return web.Response(status=400, text="bad signature")
        print(dumps({"verified": True, "event": event}), flush=True)
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post(path, receive)
    return app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ops.webhook_receiver", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--path", default="/hooks")
    args = parser.parse_args(argv)
    secret = os.environ.get("SIR_WEBHOOK_SECRET", "")
    if not secret.startswith("whsec_"):
        print(
            "set SIR_WEBHOOK_SECRET to the whsec_... secret the webhook was created with",
            file=sys.stderr,
        )
        return 2
    print(f"listening on http://{args.host}:{args.port}{args.path}", flush=True)
    web.run_app(make_app(secret, args.path), host=args.host, port=args.port, print=None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
