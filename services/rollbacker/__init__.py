"""The rollbacker (docs/design.md §6.4, §6.5): deciding and driving rollbacks to the last
known good.

- ``engine``   decides: an alert (or an operator's request) → start, ignore, or refuse;
               takes over rollbacks left running by a dead replica or our previous self
- ``driver``   drives one rollback: a new version with ``rollback_of``, batches each switched
               atomically and health-checked, promote — or stuck, and wait for an operator
- ``records``  the per-namespace ledger in ``CFG_STATE`` and its pure rules (cooldown, cap)
- ``ledger``   compare-and-set access to the ledgers
- ``plan``     strategies and batches
- ``peers``    the other services, through their ``cfg.api.*`` contracts
- ``announce`` events, webhooks and the stuck alert; ``notify`` the webhook delivery
"""
