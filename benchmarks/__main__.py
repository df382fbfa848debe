"""C{python -m benchmarks}: every benchmark in one run (see L{benchmarks.suite})."""

import sys

from benchmarks.suite import main

sys.exit(main())
