"""python -m jasco_fast: the jasco-fast command line (also what torchrun -m jasco_fast runs)."""
from jasco_fast.cli import main

raise SystemExit(main())
