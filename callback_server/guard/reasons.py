"""The guard's refusal exception; the reason codes and verdicts live in :mod:`shared.refusals`.

The codes appear unchanged in the database (``callback_requests.reason``,
``guard_refusals.reason``), the logs, the metrics
(``cbgw_guard_refusals_total{reason=...}``) and the API. Never rename one; add.

Pure: no I/O imports (the dialer imports this module).
"""

from __future__ import annotations

from shared.refusals import Refusal, Verdict

__all__ = ["GuardRefused", "Refusal", "Verdict"]


class GuardRefused(Exception):  # noqa: N818 - a refusal, not an error
    """Raised by a store hook when the guard refuses a leg at the last moment.

    ``retry_in_s``: when the job may try again (caps), or None (final).
    """

    def __init__(self, verdict: Verdict, retry_in_s: int | None = None) -> None:
        super().__init__(str(verdict))
        self.verdict = verdict
        self.retry_in_s = retry_in_s
