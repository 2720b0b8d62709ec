"""confbus benchmarks: every figure beside a raw baseline measured in the same run.

Run them with ``python -m benchmarks [NAMES…] [--smoke] [--out DIR]`` (``make bench``,
``make bench-smoke``). ``benchmarks.common`` holds what they share — statistics, machine
facts, the JSON and Markdown report, real processes — and documents the interface a
benchmark module implements.
"""
