"""version-store: every version of every namespace, validated, numbered and kept.

This package holds the storage layer (``storage/``: one ``Store`` protocol, SQLite and etcd
backends) and validation (``validate``); the NATS-facing service is built on them.
"""
