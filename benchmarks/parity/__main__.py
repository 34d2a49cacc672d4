"""``python -m benchmarks.parity COMMAND ...`` (from the repository root): the parity harness's
command line, :func:`benchmarks.parity.cli.main`."""

import sys

from .cli import main

sys.exit(main())
