"""`sir-engine dev`, as a newcomer runs it: one command brings up front, workers and scheduler,
prints working sandbox credentials and a signed request, and Ctrl-C stops everything."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
from sqlalchemy import select

from engine.tables import api_keys, catalog_products, partners
from tests.conftest import ROOT, free_port


def _start_dev(env: dict[str, str], datadir: Path, port: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "ops.cli", "dev", "--data-dir", str(datadir), "--port", str(port)],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )


def _read_banner(process: subprocess.Popen[str], timeout: float = 90) -> str:
    deadline = time.monotonic() + timeout
    lines: list[str] = []
    assert process.stdout is not None
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            raise AssertionError(f"dev exited early ({process.poll()}): {''.join(lines)}")
        lines.append(line)
        if line.strip().startswith("curl ") or "is missing" in line:
            return "".join(lines)
    raise AssertionError("no banner: " + "".join(lines))


def _get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")


def _run_printed_curl(banner: str) -> tuple[int, dict]:
    """Execute the banner's curl line with urllib (same method, URL and headers)."""
    curl = next(line.strip() for line in banner.splitlines() if line.strip().startswith("curl "))
    words = shlex.split(curl)
    url = next(w for w in words if w.startswith("http://"))
    headers = dict(words[i + 1].split(": ", 1) for i, w in enumerate(words) if w == "-H")
    return _get(url, headers)


def _stop(process: subprocess.Popen[str]) -> int:
    children = psutil.Process(process.pid).children(recursive=True)
    process.send_signal(signal.SIGINT)
    code = process.wait(timeout=60)
    gone, alive = psutil.wait_procs(children, timeout=15)
    assert not alive, f"left running after Ctrl-C: {[p.pid for p in alive]}"
    return code


def _credential(banner: str, label: str) -> str:
    match = re.search(rf"{label}\s+(\S+)", banner)
    assert match, banner
    return match.group(1)


async def test_dev_on_configured_servers(services, db, tmp_path):
    port = free_port()
    process = _start_dev(services.env(), tmp_path / "dev", port)
    try:
        banner = _read_banner(process)
        base = f"http://127.0.0.1:{port}"
        assert _get(f"{base}/healthz")[0] == 200
        status, ready = _get(f"{base}/readyz")
        assert status == 200 and ready["checks"] == {"database": "ok", "redis": "ok"}
        secret = _credential(banner, "secret key")
        public = _credential(banner, "publishable key")
        assert re.fullmatch(r"sk_test_[0-9a-f]{64}", secret)
        status, body = _run_printed_curl(banner)
        assert status == 200, body  # the printed signed GET /v1/partner/users works as printed
        assert body == {"data": [], "nextCursor": None}
        assert "funded with 1000000 tokens" in banner
    finally:
        assert _stop(process) == 0

    async with db.connect() as conn:
        demo = (
            (await conn.execute(select(partners).where(partners.c.slug == "demo-partner")))
            .mappings()
            .one()
        )
        key = (
            (await conn.execute(select(api_keys).where(api_keys.c.public_key == public)))
            .mappings()
            .one()
        )
        demo_skus = (
            await conn.execute(
                select(catalog_products.c.sku).where(catalog_products.c.sku.like("demo-%"))
            )
        ).scalars()
        assert sorted(demo_skus) == ["demo-books", "demo-cinema", "demo-coffee", "demo-groceries"]
    assert (
        demo["status"] == "ACTIVE"
        and key["partner_id"] == demo["id"]
        and key["environment"] == "sandbox"
    )

    # A second run reuses the data: same demo partner, credentials printed again, nothing new.
    process = _start_dev(services.env(), tmp_path / "dev", port)
    try:
        again = _read_banner(process)
        assert _credential(again, "secret key") == secret
    finally:
        assert _stop(process) == 0
    async with db.connect() as conn:
        count = (
            await conn.execute(select(partners.c.id).where(partners.c.slug == "demo-partner"))
        ).all()
    assert len(count) == 1


def test_dev_on_the_embedded_default(tmp_path):
    """A fresh machine: no DATABASE_URL, no REDIS_URL. The embedded servers start and stop."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"DATABASE_URL", "REDIS_URL", "SIR_MASTER_KEY", "SIR_OPERATOR_TOKENS"}
    }
    port = free_port()
    datadir = tmp_path / "fresh"
    process = _start_dev(env, datadir, port)
    try:
        banner = _read_banner(process)
        assert "embedded PostgreSQL + Redis" in banner
        status, ready = _get(f"http://127.0.0.1:{port}/readyz")
        assert status == 200 and ready["checks"] == {"database": "ok", "redis": "ok"}
        assert _run_printed_curl(banner)[0] == 200
    finally:
        assert _stop(process) == 0
    assert (datadir / "master.key").stat().st_mode & 0o777 == 0o600
    assert json.loads((datadir / "demo-credentials.json").read_text())["environment"] == "sandbox"
    # Nothing of the embedded servers keeps running after Ctrl-C.
    leftovers = [
        p
        for p in psutil.process_iter(["cmdline"])
        if str(datadir) in " ".join(p.info["cmdline"] or [])
    ]
    assert not leftovers, [p.info["cmdline"] for p in leftovers]
