"""`python -m pipelines`: the command line (pipelines/entry/cli.py)."""

import sys

from pipelines.entry.cli import main

if __name__ == "__main__":
    sys.exit(main())
