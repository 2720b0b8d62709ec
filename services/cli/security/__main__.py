"""``python -m confbus.cli.security``: add or remove users of a stack (see ``command.main``)."""

import sys

from confbus.cli.security.command import main

sys.exit(main())
