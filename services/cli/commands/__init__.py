"""One module per area; each has ``register(subparsers)``.

Every command function is ``async def run(args, client) -> int`` (the exit code) or, for
commands that do not talk to the bus (``up``, ``agent``), ``def run_local(args) -> int``.
"""
