"""`python -m polypseg.cli`: the same as the `polypseg` command."""

import sys

from polypseg.cli import main

if __name__ == "__main__":
    sys.exit(main())
