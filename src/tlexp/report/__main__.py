"""``python -m tlexp.report <sweep dir>``."""

import sys

from tlexp.report.cli import main

sys.exit(main())
