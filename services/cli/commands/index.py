"""The commands each module of ``confbus.cli.commands`` registers, with their one-line
help: what ``confbus --help`` lists without importing the modules. Written by
``confbus.cli.main.write_index()``; do not edit."""

COMMANDS: dict[str, tuple[tuple[str, str], ...]] = {
    "confbus.cli.commands.events": (
        ("replay", "print the events of the audit log (CFG_EVENTS), oldest first"),
        ("tail", "follow the audit log: print events as they happen (Ctrl-C to stop)"),
    ),
    "confbus.cli.commands.up": (
        ("up", "run the whole stack on this machine: nats-server and every service"),
    ),
    "confbus.cli.commands.agent": (
        ("agent", "run the node agent: keep FILE switched to NS's versions (confbus agent --help)"),
    ),
    "confbus.cli.commands.txn": (("txns", "list in-doubt transactions with their age"),),
    "confbus.cli.commands.publish": (
        ("publish", "propose FILE as the next version of NS and wait for the outcome"),
    ),
    "confbus.cli.commands.store": (
        ("history", "list the versions of NS, newest first"),
        ("show", "print the exact bytes of a version"),
        ("diff", "unified diff between two versions of NS"),
        ("approve", "approve a draft version (by someone other than its author)"),
        ("reject", "refuse a draft (or not yet rolled out) version for good"),
        ("backup", "write the versions and policies of NS (or of every namespace) to a file"),
        (
            "restore",
            "restore namespaces from a backup file (hashes checked; all or nothing per NS)",
        ),
    ),
    "confbus.cli.commands.policy": (("policy", "show or change the policy of NS"),),
    "confbus.cli.commands.doctor": (
        ("doctor", "check NATS, streams and replicas, the store's quorum, leaders and agents"),
    ),
    "confbus.cli.commands.rollback": (
        ("rollback", "roll NS back to its last known good (or --to VERSION), batch by batch"),
    ),
    "confbus.cli.commands.rollout": (
        ("rollout", "show the namespace's current or last rollout (waves, per-node report)"),
        ("pause", "hold the namespace's running rollout at its next wave boundary"),
        ("resume", "let a paused rollout go on"),
        ("abort", "end the namespace's rollout as failed (switched waves stay switched)"),
        ("status", "the fleet of a namespace: per node liveness, applied and target version"),
        ("forget", "forget a node gone for good (its records and targets; node.forgotten)"),
    ),
    "confbus.cli.commands.console": (("console", "tokens for the web console and its HTTP API"),),
    "confbus.cli.commands.keys": (("keys", "signing keys, trust rules and encryption keys"),),
    "confbus.cli.commands.timetravel": (
        ("why", "why a node runs the version it runs: the chain of events, newest first"),
        (
            "diff-fleet",
            "which nodes changed version between two moments, and through which rollouts",
        ),
    ),
}
