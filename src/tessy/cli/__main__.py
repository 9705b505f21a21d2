"""``python -m tessy.cli``: the same as the ``tessy`` command."""

import sys

from . import main

sys.exit(main())
