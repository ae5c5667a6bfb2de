"""``python -m percept ...``: the command-line tool (see :mod:`percept.cli`)."""

import sys

from percept.cli import main

if __name__ == "__main__":
    sys.exit(main())
