"""Benchmarks of the engine with same-run baselines (`python -m ops.bench.run`).

Every figure is reported next to its ratio to baselines measured in the same run (pgbench
tpcb-like, and a raw aiohttp server for HTTP figures), because these machines are shared and
noisy: an absolute number means little, a ratio against the same minute's ceiling travels.
"""
