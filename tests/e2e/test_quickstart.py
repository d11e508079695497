"""The README's quickstart runs as written (bash, openssl, curl, the bundled receiver and the
Python client) against a real front and a real worker: so a partner's first five minutes cannot
drift from the engine."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from engine.credentials import issue_keys
from tests.conftest import ROOT, free_port

# Contract 3.1's test vectors (../shared/spec/API.md).
VECTOR_GET = "037ab9e644b638c748ea8f78d5068b34795997ca17a7f6cd90fcd4774e0674a0"
VECTOR_POST = "813e4604e82b8ce895832c48d3b6f197b8b612e2466b9b3b64172021cb799f29"


def _blocks() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.*?)```", section, re.S)


def _bash(script: str, env: dict[str, str], cwd=ROOT, timeout: float = 60) -> str:
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def _json_lines(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


async def test_the_readme_quickstart_runs_as_written(
    db, box, make_partner, front, services, tmp_path
):
    blocks = _blocks()
    assert len(blocks) == 8, [b[:40] for b in blocks]
    load, signer, vectors, first, action, register, webhook, python = blocks
    base = front()
    partner = await make_partner(funding="1000")
    # As `make dev` runs them: a worker group and the scheduler (which picks up retries).
    engine_env = services.env(
        SIR_WEBHOOK_RETRY_SCALE="0.01", SIR_WEBHOOK_PICKUP_SECONDS="1", SIR_OUTBOX_RELAY_SECONDS="1"
    )
    background = [
        subprocess.Popen(
            [sys.executable, "-m", "ops.cli", *command],
            env=engine_env,
            cwd=ROOT,
            start_new_session=True,
        )
        for command in (["worker", "--processes", "1", "--threads", "4"], ["scheduler"])
    ]
    try:
        await _quickstart(db, box, partner, base, services, tmp_path)
    finally:
        for process in background:
            process.send_signal(signal.SIGTERM)
        for process in background:
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


async def _quickstart(db, box, partner, base, services, tmp_path) -> None:
    blocks = _blocks()
    load, signer, vectors, first, action, register, webhook, python = blocks
    async with db.begin() as conn:
        keys = await issue_keys(
            conn, box, actor="test", partner_id=partner.partner_id, environment="sandbox", name="k"
        )

    # Step 2, in a directory laid out as `make dev` leaves it.
    (tmp_path / ".sir-dev").mkdir()
    (tmp_path / ".sir-dev" / "demo-credentials.json").write_text(
        json.dumps({"secretKey": keys.secret_key, "hmacSecret": keys.hmac_secret})
    )
    (tmp_path / ".venv").symlink_to(Path(sys.executable).parent.parent)  # this run's venv
    load = load.replace("http://127.0.0.1:8080", base)
    env = dict(services.env(), PYTHONPATH=str(ROOT))
    loaded = _bash(load + 'echo "$SIR_URL $SIR_KEY $SIR_HMAC"', env, cwd=tmp_path)
    assert loaded.split() == [base, keys.secret_key, keys.hmac_secret]
    prelude = load + signer

    def run(block: str, **extra: str) -> str:
        return _bash(prelude + block, dict(env, **extra), cwd=tmp_path)

    # Step 3: the openssl signer yields the contract's test vectors, the README's printed ones.
    out = run(vectors).split()
    assert out == [VECTOR_GET, VECTOR_POST]
    assert VECTOR_GET in vectors and VECTOR_POST in vectors

    # Step 4: the first signed request is accepted.
    assert _json_lines(run(first)) == [{"data": [], "nextCursor": None}]

    # Step 5: the first action is applied and shows in the balance.
    result, balance = _json_lines(run(action))
    assert result["status"] == "COMPLETED" and result["tokensDistributed"] == 49.99
    assert balance["externalUserId"] == "user_42" and balance["available"] == 49.99
    time.sleep(1.1)  # the same submit again, signed afresh a second later: 409 IDEMPOTENT
    again = _json_lines(run(action.split("\n")[0]))[0]
    assert again["error"]["code"] == "IDEMPOTENT"
    assert again["error"]["details"]["original"]["actionId"] == result["actionId"]

    # Step 6: register, run the receiver, trigger: the event arrives and verifies.
    port = free_port()
    registered = _json_lines(run(register.replace("9000", str(port))))[0]
    assert registered["secret"].startswith("whsec_")
    received = tmp_path / "receiver.out"
    script = webhook.replace("whsec_...", registered["secret"]).replace("9000", str(port))
    # Wait for the receiver's line, then stop the receiver the block left in the background.
    script += (
        f"\nfor _ in $(seq 300); do grep -q action.completed {received} && break; sleep 0.1; done"
        "\nkill %1 || true; wait || true\n"
    )
    with received.open("w") as sink:
        done = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", prelude + script],
            env=env,
            cwd=tmp_path,
            stdout=sink,
            stderr=subprocess.PIPE,
            text=True,
            timeout=90,
            check=False,
        )
    assert done.returncode == 0, done.stderr
    lines = _json_lines(received.read_text())
    second = next(line for line in lines if line.get("status") == "COMPLETED")
    events = [line["event"] for line in lines if line.get("verified")]
    # The second action's event arrived at the receiver, and its signature verified.
    assert [e["type"] for e in events if e["data"].get("actionId") == second["actionId"]] == [
        "action.completed"
    ], received.read_text() + done.stderr

    # Step 7: the Python client, same credentials.
    python_out = run(python)
    assert "'externalUserId': 'user_42'" in python_out and "Decimal('54.99')" in python_out
