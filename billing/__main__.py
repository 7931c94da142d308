"""``python -m billing``: see :mod:`billing.cli`."""

import sys

from billing.cli import main

sys.exit(main())
