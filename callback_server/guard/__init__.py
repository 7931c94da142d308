"""The toll-fraud and harassment guard of the callback site.

* :mod:`.policy` — pure destination policy (country + number type allowlist,
  built-in JP service prefixes, operator prefixes, block/allow lists);
* :mod:`.velocity` — pure per-number limits and the unconfirmed lockout;
* :mod:`.brake` — pure global anomaly brake on unconfirmed new numbers;
* :mod:`.caps` — pure per-trunk and global channel, CPS and daily spend caps;
* :mod:`.reasons` — the stable reason codes;
* :mod:`.service` — :class:`Guard`, what the intake, worker, ARI adapter and
  CDR writer call; :mod:`.store` its SQL (migration ``0100_guard.sql``);
* :mod:`.alerts` — webhook + e-mail (SMTP) alerts; its counters are in
  :mod:`callback_server.metrics` (the site's ``GET /metrics``);
* :mod:`.http` — operator API and the raw-caller intake check;
  ``python -m callback_server.guard`` — the same operations from a shell.
"""
