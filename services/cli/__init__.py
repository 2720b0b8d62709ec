"""The ``confbus`` command and the Python client it is built on (``services.cli.client``)."""
