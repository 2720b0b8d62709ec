"""A service that fails before it is ready, as one with an unreadable store would."""

import sys

if __name__ == "__main__":
    sys.stderr.write('{"level": "error", "msg": "boom: the store is unreadable"}\n')
    sys.exit(1)
