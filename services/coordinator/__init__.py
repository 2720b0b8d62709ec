"""The coordinator: one atomic switch (two-phase commit) of one set of nodes to one version
(docs/design.md §4). It owns each namespace's transaction head and the write-once decisions."""
