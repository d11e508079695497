"""`sir-engine serve --processes N`: N real front processes on one port, one metrics view, and
nothing left behind however the group ends."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ROOT, free_port, wait_http_ok


def _start(services, port: int, processes: int = 2) -> subprocess.Popen[bytes]:
    parent = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ops.cli",
            "serve",
            "--processes",
            str(processes),
            "--port",
            str(port),
        ],
        env=services.env(),
        cwd=ROOT,
    )
    # Two interpreters importing the app at once: give a loaded machine time (seen > 30 s).
    try:
        wait_http_ok(f"http://127.0.0.1:{port}/healthz", parent, timeout=90)
    except BaseException:
        parent.kill()  # the children die with their parent (a failed start left them running)
        parent.wait(timeout=10)
        raise
    return parent


def _children(parent: subprocess.Popen[bytes], expected: int) -> list[psutil.Process]:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        children = psutil.Process(parent.pid).children()
        listening = [c for c in children if _listens(c)]
        if len(listening) == expected:
            return children
        time.sleep(0.2)
    raise AssertionError(f"expected {expected} listening children, got {children}")


def _listens(process: psutil.Process) -> bool:
    try:
        return any(c.status == psutil.CONN_LISTEN for c in process.net_connections(kind="tcp"))
    except psutil.NoSuchProcess:
        return False


def _port_closed(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) != 0


def _gone(processes: list[psutil.Process]) -> bool:
    for process in processes:
        try:
            if process.status() != psutil.STATUS_ZOMBIE:
                return False
        except psutil.NoSuchProcess:
            continue
    return True


def _wait_gone(processes: list[psutil.Process], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not _gone(processes):
        time.sleep(0.1)
    assert _gone(processes), [p.pid for p in processes if p.is_running()]


def _requests_counted(body: str) -> float:
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            if (
                sample.name == "sir_http_requests_total"
                and sample.labels.get("route_class") == "healthz"
            ):
                return sample.value
    return 0.0


def test_two_front_processes_share_one_port_and_stop_together(services):
    port = free_port()
    parent = _start(services, port)
    try:
        # Given `serve --processes 2`: two children, each listening on the one port,
        children = _children(parent, 2)
        for child in children:
            ports = {c.laddr.port for c in child.net_connections(kind="tcp")}
            assert port in ports
        metrics_dir = Path(children[0].environ()["PROMETHEUS_MULTIPROC_DIR"])
        # when 60 requests arrive on fresh connections,
        for _ in range(60):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
                assert r.status == 200
        # then the kernel spread them over both children (each wrote its own samples), and
        # /metrics, whichever child answers, counts all of them.
        written = {p.name for p in metrics_dir.iterdir()}
        for child in children:
            assert f"counter_{child.pid}.db" in written, written
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            assert _requests_counted(r.read().decode()) >= 60
        # When the parent gets SIGTERM, it forwards it, every child stops, the parent exits 0,
        # the port is free and the metrics directory is gone.
        parent.send_signal(signal.SIGTERM)
        assert parent.wait(timeout=30) == 0
        _wait_gone(children)
        assert _port_closed(port)
        assert not metrics_dir.exists()
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()


def test_a_child_that_dies_stops_the_group_and_nothing_restarts(services):
    port = free_port()
    parent = _start(services, port)
    try:
        children = _children(parent, 2)
        # Given a child that dies on its own,
        children[0].kill()
        # then the parent stops the other one and exits non-zero: no silent restart.
        assert parent.wait(timeout=30) == 1
        _wait_gone(children)
        assert _port_closed(port)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()


def test_a_killed_parent_leaves_no_front_running(services):
    port = free_port()
    parent = _start(services, port)
    children = _children(parent, 2)
    # Given the parent SIGKILLed (it cannot forward anything), the kernel still stops the children.
    parent.kill()
    parent.wait()
    _wait_gone(children)
    assert _port_closed(port)
