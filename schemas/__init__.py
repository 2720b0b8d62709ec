"""The confbus wire contract (``confbus.schemas``): every message, subject and stream, defined once.

Services never import each other; they share only this package and ``confbus.runtime``.
"""
