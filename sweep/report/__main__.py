"""`python -m sweep.report`: see sweep/report/build.py."""

import sys

from sweep.report.build import main

sys.exit(main())
