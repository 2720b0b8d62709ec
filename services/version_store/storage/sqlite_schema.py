"""The SQLite schema, as numbered migrations applied once each and recorded in
``schema_migrations``. Never edit a migration that has shipped: add the next one.
"""

from __future__ import annotations

MIGRATIONS: list[tuple[int, str, list[str]]] = [
    (
        1,
        "versions, blobs, namespace heads, policies",
        [
            # Content is stored once per sha256: a rollback (same bytes as an older version)
            # or a re-published config costs one row of metadata, not another copy.
            """CREATE TABLE blobs (
                sha256  TEXT PRIMARY KEY,
                content BLOB NOT NULL
            ) WITHOUT ROWID""",
            # The primary key (namespace, version) is the history index: newest-first pages
            # are a backwards range scan of it, whatever the number of versions.
            """CREATE TABLE versions (
                namespace   TEXT    NOT NULL,
                version     INTEGER NOT NULL CHECK (version >= 1),
                change_id   TEXT    NOT NULL,
                sha256      TEXT    NOT NULL REFERENCES blobs(sha256),
                size        INTEGER NOT NULL,
                format      TEXT    NOT NULL,
                parent      INTEGER,
                author      TEXT    NOT NULL,
                message     TEXT    NOT NULL,
                created_at  TEXT    NOT NULL,
                status      TEXT    NOT NULL,
                rollback_of INTEGER,
                approved_by TEXT,
                strategy    TEXT,
                selector    TEXT,
                PRIMARY KEY (namespace, version),
                UNIQUE (namespace, change_id)
            ) WITHOUT ROWID""",
            # One row per namespace: its newest version and its two pointers. Every append
            # updates it in the same transaction, so "newest" can never disagree with versions.
            """CREATE TABLE namespaces (
                namespace  TEXT PRIMARY KEY,
                newest     INTEGER NOT NULL DEFAULT 0,
                production INTEGER,
                last_good  INTEGER
            ) WITHOUT ROWID""",
            """CREATE TABLE policies (
                namespace TEXT PRIMARY KEY,
                policy    BLOB NOT NULL
            ) WITHOUT ROWID""",
        ],
    ),
    (
        2,
        "the signatures each version was stored with",
        # JSON (a list of confbus.schemas.signing.Signature); NULL for none.
        ["ALTER TABLE versions ADD COLUMN signatures TEXT"],
    ),
]
