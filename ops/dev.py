"""`sir-engine dev`: the whole engine in one command.

With DATABASE_URL / REDIS_URL unset it starts a private PostgreSQL and Redis under the data
directory (kept between runs); with them set it uses those servers. Either way it migrates,
creates the demo partner on first run, prints credentials and a signed request, and runs the
front, the workers and the scheduler as child processes until Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from engine.crypto import SecretBox, generate_master_key
from engine.settings import DEFAULT_PORT, parse_master_key
from engine.signing import sign_request

CREDENTIALS_FILE = "demo-credentials.json"


def _secret_file(path: Path, make: Any) -> str:
    """Read a generated secret kept in the data dir, creating it (mode 0600) on first run."""
    if path.exists():
        return path.read_text().strip()
    value = str(make())
    path.write_text(value + "\n")
    path.chmod(0o600)
    return value


def _prepare_environment(datadir: Path, args: argparse.Namespace) -> tuple[dict[str, str], Any]:
    env = dict(os.environ)
    embedded = None
    if not env.get("DATABASE_URL") or not env.get("REDIS_URL"):
        from ops import embedded as emb

        if not env.get("DATABASE_URL"):
            env["DATABASE_URL"], pg = emb.start_postgres(datadir)
        else:
            pg = None
        if not env.get("REDIS_URL"):
            env["REDIS_URL"], rd = emb.start_redis(datadir)
        else:
            rd = None
        embedded = (pg, rd)
    env.setdefault("SIR_MASTER_KEY", _secret_file(datadir / "master.key", generate_master_key))
    import secrets

    env.setdefault(
        "SIR_OPERATOR_TOKENS",
        _secret_file(datadir / "operator.token", lambda: "op_" + secrets.token_hex(24)),
    )
    env.setdefault("SIR_WEBHOOK_ALLOW_PRIVATE", "true")
    env["SIR_HOST"] = args.host or env.get("SIR_HOST", "127.0.0.1")
    env["SIR_PORT"] = str(args.port or env.get("SIR_PORT", DEFAULT_PORT))
    return env, embedded


async def _ensure_demo(env: dict[str, str], datadir: Path) -> dict[str, Any] | None:
    from engine.db import create_engine
    from ops.demo import bootstrap_demo, demo_exists

    db = create_engine(env["DATABASE_URL"], pool_size=1, max_overflow=0)
    try:
        stored = datadir / CREDENTIALS_FILE
        if await demo_exists(db):
            return json.loads(stored.read_text()) if stored.exists() else None
        creds = await bootstrap_demo(db, SecretBox(parse_master_key(env["SIR_MASTER_KEY"])))
        stored.write_text(json.dumps(creds, indent=2))
        stored.chmod(0o600)  # dev-only sandbox secrets, kept so later runs can print them again
        return creds
    finally:
        await db.dispose()


def signed_curl(
    creds: dict[str, Any], base_url: str, method: str, path: str, body: str = ""
) -> str:
    """A copy-paste curl line signed now (valid for 300 seconds)."""
    timestamp = str(int(time.time()))
    signature = sign_request(creds["hmacSecret"], timestamp, method, path, body.encode())
    parts = [
        "curl",
        "-sS",
        "-X",
        method,
        f"{base_url}{path}",
        "-H",
        f"X-Partner-Key: {creds['secretKey']}",
        "-H",
        f"X-Timestamp: {timestamp}",
        "-H",
        f"X-Signature: {signature}",
    ]
    if body:
        parts += ["-H", "Content-Type: application/json", "--data-raw", body]
    return shlex.join(parts)


def _wait_healthy(url: str, children: list[subprocess.Popen[bytes]], timeout: float = 60) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(child.poll() is not None for child in children):
            return False
        try:
            with urllib.request.urlopen(url, timeout=1) as response:  # noqa: S310 - our own loopback
                if response.status == 200:
                    return True
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    return False


def _stop(children: list[subprocess.Popen[bytes]], grace: float = 15) -> None:
    for child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for child in children:
        try:
            child.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def run_dev(args: argparse.Namespace) -> int:
    from ops.migrate import upgrade

    datadir = Path(args.data_dir).resolve()
    datadir.mkdir(parents=True, exist_ok=True)
    env, embedded = _prepare_environment(datadir, args)
    children: list[subprocess.Popen[bytes]] = []
    stopping = False

    def on_signal(signum: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        upgrade(env["DATABASE_URL"])
        creds = asyncio.run(_ensure_demo(env, datadir))
        cli = [sys.executable, "-m", "ops.cli"]
        commands = {
            "front": [*cli, "serve"],
            "workers": [
                *cli,
                "worker",
                "--processes",
                str(args.worker_processes),
                "--threads",
                str(args.worker_threads),
            ],
            "scheduler": [*cli, "scheduler"],
        }
        name_of: dict[int, str] = {}
        for name, command in commands.items():
            # Own session: Ctrl-C reaches only us, and we stop the children in order.
            child = subprocess.Popen(command, env=env, start_new_session=True)  # noqa: S603
            children.append(child)
            name_of[child.pid] = name
        base_url = f"http://{env['SIR_HOST']}:{env['SIR_PORT']}"
        if not _wait_healthy(f"{base_url}/healthz", children):
            print("sir-engine dev: the front did not become healthy; stopping", file=sys.stderr)
            return 1
        _banner(base_url, env, creds, datadir, embedded is not None)
        while not stopping:
            exited = [c for c in children if c.poll() is not None]
            if exited:
                print(
                    f"sir-engine dev: the {name_of[exited[0].pid]} exited; stopping",
                    file=sys.stderr,
                )
                return 1
            time.sleep(0.3)
        print("\nsir-engine dev: stopping front, workers and scheduler...", flush=True)
        return 0
    finally:
        _stop(children)
        if embedded is not None:
            pg, rd = embedded
            if rd is not None:
                try:
                    rd.shutdown(save=True, now=True)
                except Exception:  # noqa: BLE001, S110 - already stopped
                    pass
            if pg is not None:
                pg.cleanup()
        print("sir-engine dev: stopped.", flush=True)


def _banner(
    base_url: str, env: dict[str, str], creds: dict[str, Any] | None, datadir: Path, embedded: bool
) -> None:
    lines = [
        "",
        "SIR engine is running (Ctrl-C stops everything)",
        f"  front        {base_url}   (/healthz, /readyz, /metrics)",
        f"  data         {'embedded PostgreSQL + Redis under ' + str(datadir) if embedded else 'DATABASE_URL / REDIS_URL'}",
        f"  operator     Authorization: Bearer {env['SIR_OPERATOR_TOKENS'].split(',')[0]}",
    ]
    if creds:
        lines += [
            "",
            "Demo partner (sandbox):",
            f"  partner id        {creds['partnerId']}",
            f"  publishable key   {creds['publishableKey']}",
            f"  secret key        {creds['secretKey']}",
            f"  HMAC secret       {creds['hmacSecret']}",
            f"  pool              {creds['poolId']} (funded with {creds['poolBalance']} tokens)",
            "",
            "A signed request (valid for 5 minutes; `sir-engine sign GET /v1/partner/users` makes a fresh one):",
            "  " + signed_curl(creds, base_url, "GET", "/v1/partner/users"),
            "",
            "Donate widget (paste into any HTML page; sandbox pays on the test checkout):",
            f'  <div data-sir-donate data-key="{creds["publishableKey"]}" data-nonprofit="american-red-cross"'
            f' data-amount="2500" data-provider="stripe"></div><script src="{base_url}/widget.js"></script>',
        ]
    else:
        lines += [
            "",
            f"Demo partner exists but {datadir / CREDENTIALS_FILE} is missing; issue keys with `sir-engine admin keys-issue`.",
        ]
    print("\n".join(lines), flush=True)


def cmd_sign(args: argparse.Namespace) -> int:
    """Print a signed curl line using the dev credentials file."""
    path = Path(args.credentials)
    if not path.exists():
        print(f"sir-engine sign: {path} not found (run `sir-engine dev` first)", file=sys.stderr)
        return 2
    creds = json.loads(path.read_text())
    base = (
        args.base_url
        or f"http://{os.environ.get('SIR_HOST', '127.0.0.1')}:{os.environ.get('SIR_PORT', DEFAULT_PORT)}"
    )
    print(signed_curl(creds, base, args.method.upper(), args.path, args.body or ""))
    return 0
