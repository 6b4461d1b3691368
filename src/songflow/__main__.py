"""``python -m songflow`` (also ``torchrun -m songflow train ...``)."""

from songflow.interfaces.cli import main

raise SystemExit(main())
