"""The health-watcher: whether the nodes running a version are healthy (docs/design.md §6.1–§6.3).

Samples in (agents' and its own scrapes, ``cfg.health.<ns>.<node>``), rules from the
namespace's policy, verdicts out (``cfg.api.health.verdict``), alerts out (``cfg.alert.<ns>``),
plus an Alertmanager webhook receiver. ``README.md`` beside this file has the rule semantics, the
metric mapping, the lease scheme and the API's behaviour.

```
rules.py         pure judging: windows, error rate from counters, majority, hysteresis, verdicts
windows.py       the bounded in-memory samples, per namespace / version / node
alerts.py        the lease holder's evaluation → alerts, and the alert book in CFG_STATE
                 (one evaluating replica per namespace: lease.health.<ns>)
scraping.py      the policies' scrape_targets → samples
alertmanager.py  POST /alertmanager → alerts
policies.py      policies, heartbeats, the namespaces that exist
service.py       the wiring
```
"""
