"""The confbus wire contract: every message, subject and stream, defined once.

Services never import each other; they share only this package and ``services.runtime``.
"""
