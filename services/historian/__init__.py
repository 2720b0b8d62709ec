"""The historian: folds ``CFG_EVENTS`` into fleet checkpoints (``CFG_CHECKPOINTS``), so that
``confbus status --at``, ``why`` and ``diff-fleet`` start near the moment they are asked about
instead of at the start of the stream (docs/design.md §8.10).

It reads every namespace's events with one ordered consumer and keeps each namespace's
``FleetState`` (``confbus.schemas.fold``) in memory. It writes a checkpoint of a namespace after
every ``--every`` of its events ("kept"), and, for a namespace with events not yet in any
checkpoint, after ``--idle`` seconds ("tail": replaced by the next one, so consecutive kept
checkpoints stay ``--every`` events apart and a reader folds at most about twice that). After
each write it advances its cursor: the sequence up to which every namespace's events are in a
checkpoint, from which a restart resumes.

Checkpoints cost time, never correctness: a reader checks each one (checksum, namespace,
sequence, stream) and folds from an older one, or the stream's start, when one is damaged or
missing. Replicas need no lease: a checkpoint is the fold of the stream up to its sequence, so
two replicas write the same content (and different keys when they are at different places).
Only services may write the bucket (docs/security.md), so a reader cannot plant a lying one.
"""
