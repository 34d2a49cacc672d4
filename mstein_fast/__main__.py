"""``python -m mstein_fast ...`` (and ``torchrun ... -m mstein_fast train ...``): the command line."""

import sys

from mstein_fast.cli import main

sys.exit(main())
