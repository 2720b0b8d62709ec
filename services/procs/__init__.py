"""The processes confbus starts and looks after: nats-server, etcd, its own services.

``confbus up`` (and ``up --ha``), the tests and the benchmarks start them all through here, so
there is one way to start, wait for, stop and restart each:

- ``spawn``  — ``Popen`` whose child dies with its parent (Linux's parent-death signal,
  through ``guard.py``); stop, kill, exit codes as words
- ``proc``   — ``Proc``: a process whose output lines are waited on with deadlines
- ``nats``   — ``NatsServer``: JetStream with ``sync_interval: always``, alone or clustered
- ``etcd``   — ``EtcdCluster``/``EtcdMember`` on loopback
- ``agent``  — the node agent's command line (its bus, node, state dir, namespaces and files)
- ``ports``  — free loopback ports below the ephemeral range
- ``watch``  — restart a server that died, with backoff

A package of its own rather than part of ``confbus.runtime``: the runtime is what every service
runs on, and no service starts processes; the supervisor, tests and benchmarks do
(``tests/test_architecture.py`` holds services to ``confbus.schemas`` and ``confbus.runtime``).
"""
