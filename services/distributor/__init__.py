"""The distributor: getting the fleet to where it should be — rollouts in waves with bakes,
node membership and liveness, each node's target version, catch-up, drift repair, and the
delivery report of every rollout (docs/design.md §3.4–§3.6).

Modules::

    service      wiring: heartbeats, the event consumers, KV watches, leases, the API
    rollouts     the rollout records: compare-and-set on our copy, and their outbox
    intent       recording rollout intents (version events, rollbacks) and the controls
                 (pause/resume/abort)
    driver       the per-namespace driver: plan, bakes, verdicts, promotion, superseding
    switching    one wave's switch, its outcome, and finding out what became of one after
                 a crash
    record       the rollout record's transitions (pure functions) and their events
    record_waves the transitions of a wave: attempt, outcome, verdict
    strategy     the strategy grammar and selectors, parsed in one place
    membership   liveness from heartbeats; node records and node.status events
    targets      each node's target version (committed transactions ∪ production)
    repairs      catch-up (one-node switches) and drift repair (re-sync), with backoff
    txnlog       what became of a wave's transaction (head, decisions, txn.aborted events)
    store        the version-store and coordinator calls
    api          cfg.api.dist.* (status, rollout, pause, resume, abort)

State in ``CFG_STATE`` (shared by replicas; keys and records in ``confbus.schemas.state``,
read and written through ``confbus.runtime.kv``, leases from ``confbus.runtime.leases``)::

    rollout.<ns>                 the current or last rollout (confbus.schemas.api.dist.RolloutInfo),
                                 written only by compare-and-set
    target.<ns>.<node>           highest version of a committed transaction that included it
    node.<node>                  labels, namespaces (applied version, sha256), last heartbeat,
                                 liveness
    lease.distributor.<ns>       the replica driving the namespace (rollouts, catch-up, drift)
    lease.distributor._members   the replica writing node records and node.status events

Rollout states: ``running ⇄ paused → completed | failed | superseded | rolled_back``; a
terminal record is never driven again (see ``record`` for the waves' states).

Hand-over to and from the rollbacker: a failed bake publishes an ``Alert`` on
``cfg.alert.<ns>`` (``source="distributor"``, ``alert_id="distributor:<rollout id>:bake<N>"``,
idempotent) and ends the rollout ``failed`` with ``handed_to_rollbacker``. The rollbacker ends
the namespace's rollout as ``rolled_back`` with ``cfg.api.dist.abort`` and
``rolled_back=true`` (``version`` optional: only if it is that version's rollout); the
distributor also does so by itself on ``rollback.started``. Versions carrying ``rollback_of``
are the rollbacker's to switch: the distributor starts no rollout for them (their committed
transactions raise node targets like any other, and their promotion moves production).
"""
