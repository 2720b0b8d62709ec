"""The operator console: a web console and an HTTP JSON API over the bus (docs/design.md §7.5).

A front end like the CLI: it reads and acts through the Python client (``backend``), never
another service's package. ``api`` declares the HTTP operations once (routes and the OpenAPI
document, ``openapi``); ``pages`` renders the console (templates/, static/); ``auth`` decides
who may do what (tokens, roles, CSRF).
"""
