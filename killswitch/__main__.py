"""``python -m killswitch`` is the same program as ``killswitch``."""

import sys

from killswitch.cli import main

sys.exit(main())
