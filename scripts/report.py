"""Write report.html and PNG figures for a sweep: `python scripts/report.py <sweep dir> [--out DIR] [--fraction F]`.

The same as the `tlexp-report` console script (src/tlexp/report/cli.py).
"""

import sys

from tlexp.report import main

if __name__ == "__main__":
    sys.exit(main())
