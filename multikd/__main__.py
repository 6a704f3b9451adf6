"""`python -m multikd ...` (also what `torchrun -m multikd` runs)."""

from multikd.cli import main

raise SystemExit(main())
