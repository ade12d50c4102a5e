"""``python -m distill``: see :mod:`distill.cli`."""

from distill.cli import main

raise SystemExit(main())
