"""python -m jasco_fast: the jasco-fast command line (also what ``torchrun -m jasco_fast`` runs)."""

import sys

from jasco_fast.cli import main

if __name__ == "__main__":
    sys.exit(main())
