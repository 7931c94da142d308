"""Entry point: ``python -m routing_rates``."""

from __future__ import annotations

import sys

from routing_rates.cli import main

sys.exit(main())
