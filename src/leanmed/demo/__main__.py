"""``python -m leanmed.demo``."""

import sys

from leanmed.demo.cli import main

sys.exit(main())
