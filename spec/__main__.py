"""``python -m spec``: see ``spec.cli``."""

from spec.cli import main

raise SystemExit(main())
