"""``python -m callback_server``: run the callback site, check its config, or make its keys.

    python -m callback_server serve --config deploy/callback.example.toml
    python -m callback_server serve --config FILE --role intake   # an extra intake process
    python -m callback_server check --config FILE
    python -m callback_server keys init --dir var/pki
    python -m callback_server keys rotate --dir var/pki

The command line is the same for both sites: see :mod:`shared.server_cli`.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from callback_server.app import create_app, create_intake_app
from callback_server.config import CallbackSettings
from shared.server_cli import Site
from shared.server_cli import main as site_main

SITE = Site("callback", CallbackSettings.load_checked, create_app, create_intake_app)


def main(argv: Sequence[str] | None = None) -> int:
    return site_main(SITE, argv)


if __name__ == "__main__":
    sys.exit(main())
