"""``python -m textrefiner`` is the ``textrefiner`` command."""

import sys

from .cli import main

sys.exit(main())
