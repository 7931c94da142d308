"""``python -m edge_server``: run the edge site, check its config, or make its keys.

    python -m edge_server serve --config deploy/edge.example.toml
    python -m edge_server check --config FILE
    python -m edge_server keys init --dir var/pki
    python -m edge_server keys rotate --dir var/pki

The command line is the same for both sites: see :mod:`shared.server_cli`.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from edge_server.app import create_app
from edge_server.config import EdgeSettings
from shared.server_cli import Site
from shared.server_cli import main as site_main

SITE = Site("edge", EdgeSettings.load_checked, create_app)


def main(argv: Sequence[str] | None = None) -> int:
    return site_main(SITE, argv)


if __name__ == "__main__":
    sys.exit(main())
