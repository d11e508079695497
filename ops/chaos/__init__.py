"""Reliability runs on a private loopback deployment: the chaos harness (`python -m ops.chaos`)
and the soak (`python -m ops.chaos.soak`). See `run.py` and `soak.py`."""
