"""``python -m sdexplore`` is the ``sdexplore`` command."""

import sys

from .cli import main

sys.exit(main())
