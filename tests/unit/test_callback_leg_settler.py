"""``LegSettler.record_of`` waiting for a leg just hung up: Asterisk's answer log knows
the answer at once, its hangup handler writes the end a moment later; the wait is for
the end, not the answer alone (else a leg the restart hung up would be dated ended at
its answer, and a lost consultation's talk cut short)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from callback_server.legrecord import LegRecord
from callback_server.reconcile import LegSettler
from callback_server.store.leg_store import LegRow
from callback_server.testing import FixedRater

T0 = datetime(2026, 12, 5, 7, 0, tzinfo=UTC)
LEG = LegRow("cb-1-02", "cb-1", "acme", "customer", "carrier-a", "PJSIP/x@carrier-a",
             "answered", True, T0, None, T0, "ast-a", "+819012345678", "edge-1")


class Records:
    """Asterisk's answers, one fetch after another."""

    def __init__(self, *answers: LegRecord | None) -> None:
        self.answers = list(answers)
        self.fetches = 0

    async def fetch(self, channel_id: str, started_at: datetime) -> LegRecord | None:
        self.fetches += 1
        return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]


def settler(records: Records) -> LegSettler:
    return LegSettler(None, FixedRater(), records, {})  # type: ignore[arg-type]


async def test_a_record_with_only_the_answer_is_asked_again_until_its_end() -> None:
    ended = LegRecord(T0, T0 + timedelta(seconds=40), 16)
    records = Records(None, LegRecord(T0, None, 0), ended)
    assert await settler(records).record_of(LEG, wait_s=2.0) == ended
    assert records.fetches == 3


async def test_an_answer_alone_is_what_asterisk_knows_once_the_wait_is_over() -> None:
    answer_only = LegRecord(T0, None, 0)                    # Asterisk died with the leg up
    records = Records(answer_only)
    assert await settler(records).record_of(LEG, wait_s=0.5) == answer_only
    assert records.fetches >= 2
    once = Records(answer_only)
    assert await settler(once).record_of(LEG) == answer_only and once.fetches == 1
