"""``python -m reference.teacher_server``: the documented entry of :mod:`distill.teacher_server`."""

import sys

from distill.teacher_server import main

if __name__ == "__main__":
    sys.exit(main())
