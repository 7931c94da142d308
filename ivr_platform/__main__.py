"""Entry point: ``python -m ivr_platform``."""

from __future__ import annotations

import sys

from ivr_platform.cli import main

sys.exit(main())
