"""Entry point: ``python -m advisors``."""

from __future__ import annotations

import sys

from advisors.cli import main

sys.exit(main())
