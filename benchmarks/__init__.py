"""confbus benchmarks: every figure beside a raw baseline measured in the same run.

Run them with ``python -m benchmarks [NAMES…] [--smoke] [--out DIR]`` (``make bench``,
``make bench-smoke``). What they share is in three modules: ``benchmarks.report`` (statistics,
figures beside baselines, machine facts, the JSON and Markdown report), ``benchmarks.processes``
(the ``Context`` a benchmark runs in — real nats-server, etcd and services through
``confbus.procs`` — and what is measured of them; it documents the interface a benchmark
module implements) and ``benchmarks.fleets`` (many real agents).
"""
