"""``python -m messi.cli``."""

import sys

from . import main

sys.exit(main())
