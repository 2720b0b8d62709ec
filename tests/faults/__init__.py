"""The fault harness: real processes, a recorded workload, injected faults, and a
check of the history afterwards. ``RELIABILITY.md`` is regenerated from what it records
(``python -m tests.faults.report``)."""
