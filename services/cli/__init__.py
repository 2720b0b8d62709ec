"""The ``confbus`` command, built on the Python client (``confbus.client``)."""
