"""The ``confbus`` command and the Python client it is built on (``confbus.cli.client``)."""
