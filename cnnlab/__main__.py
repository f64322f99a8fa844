"""`python -m cnnlab`: the command line, as the `cnnlab` script runs it."""

import sys

from cnnlab.cli import main

sys.exit(main())
