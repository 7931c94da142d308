"""The media sweep's orders collected and who hung up: the call-backs a phone answered
(:func:`bench._stack_load.answered_calls`, from its SIPp message log) against the order
rows stored for them (:class:`bench.load_sweep.Orders`), and the phones ``--ivr`` picks."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime, timedelta

from bench._stack_load import Answered, answered_calls
from bench.load_sweep import PHONE_OF_IVR, Orders, arguments
from tests.harness.sipp import SIPP_DIR, SipMessage

T0 = datetime(2026, 12, 7, 10, 0, tzinfo=UTC)


def at(ms: int) -> datetime:
    return T0 + timedelta(milliseconds=ms)


def msg(ms: int, direction: str, first_line: str, call_id: str, cseq: str) -> SipMessage:
    return SipMessage(direction, at(ms), first_line, {"call-id": call_id, "cseq": cseq})


def dialog(cid: str, number: str, bye: str | None, at: int = 0, *,
           answer: bool = True) -> list[SipMessage]:
    out = [msg(at, "received", f"INVITE sip:{number}@127.0.0.1:15080 SIP/2.0", cid,
               "1 INVITE"),
           msg(at + 1, "sent", "SIP/2.0 180 Ringing", cid, "1 INVITE")]
    if answer:
        out += [msg(at + 2, "sent", "SIP/2.0 200 OK", cid, "1 INVITE"),
                msg(at + 500, "sent", "SIP/2.0 200 OK", cid, "1 INVITE")]   # retransmitted
    if bye == "customer":
        out += [msg(at + 6000, "sent", "BYE sip:x@127.0.0.1 SIP/2.0", cid, "1 BYE"),
                msg(at + 6010, "received", "SIP/2.0 200 OK", cid, "1 BYE")]
    elif bye == "server":
        out += [msg(at + 9000, "received", "BYE sip:x@127.0.0.1 SIP/2.0", cid, "2 BYE"),
                msg(at + 9001, "sent", "SIP/2.0 200 OK", cid, "2 BYE")]
    elif bye == "crossed":   # the phone's BYE first, the server's crossing it
        out += [msg(at + 6000, "sent", "BYE sip:x@127.0.0.1 SIP/2.0", cid, "1 BYE"),
                msg(at + 6001, "received", "BYE sip:x@127.0.0.1 SIP/2.0", cid, "2 BYE")]
    return out


def test_answered_calls_say_who_hung_up_each_answered_call_back() -> None:
    messages = [*dialog("a", "819050000000", "customer"),
                *dialog("b", "819050000001", "server", 100),
                *dialog("c", "819050000002", "crossed", 200),
                *dialog("d", "819050000003", None, 300),
                *dialog("e", "819050000004", None, 400, answer=False)]
    assert answered_calls(messages) == {
        "a": Answered("819050000000", "customer", at(6000)),
        "b": Answered("819050000001", "server", at(9100)),
        "c": Answered("819050000002", "customer", at(6200)),
        "d": Answered("819050000003", None)}


def test_orders_count_each_answered_call_backs_order_and_name_the_lost_and_doubled() -> None:
    calls = [Answered(f"8190500000{i:02d}", "customer", at(6000)) for i in range(5)]
    calls[4] = Answered("819050000004", "server", at(9000))
    rows = [("+819050000000", "1234", "2", at(5000)),
            ("+819050000001", "1234", "2", at(5000)),
            ("+819050000001", "1234", "2", at(5100)),                   # twice
            ("+819050000002", "99", "2", at(7500)),                     # other fields, late
            ("+819050000004", "1234", "2", at(8000)),                   # before the server's BYE
            ("+819059999999", "1234", "2", at(5000))]                   # not answered
    edge = {"+819050000000": 1, "+819050000001": 2, "+819050000004": 1}
    orders = Orders.build(calls, rows, edge)
    assert (orders.answered, orders.collected, orders.at_edge) == (5, 2, 3)
    assert orders.missing == ["+819050000003"]
    assert orders.twice == ["+819050000001"] and orders.wrong == ["+819050000002 (99 x 2)"]
    assert orders.unanswered == 1
    assert orders.byes == Counter(customer=4, server=1)
    assert orders.missing_byes == Counter(customer=1)
    assert orders.after_bye == [1.5]
    assert orders.line() == (
        "orders collected 2 of 5 call-backs answered, at the edge 3; BYE by customer 4, "
        "server 1; written after the customer's BYE 1 (up to 1.5 s after); NO order 1: "
        "+819050000003 (hung up by customer 1); two or more 1: +819050000001; "
        "other fields 1: +819050000002 (99 x 2); 1 of numbers not answered")


def test_every_order_stored_once_is_one_plain_line() -> None:
    calls = [Answered(f"81905000{i:04d}", "customer", at(6000)) for i in range(2400)]
    rows = [(f"+{c.number}", "1234", "2", at(5000)) for c in calls]
    orders = Orders.build(calls, rows, {row[0]: 1 for row in rows})
    assert orders.line() == ("orders collected 2400 of 2400 call-backs answered, "
                             "at the edge 2400; BYE by customer 2400")


def test_the_short_ivr_is_the_media_default_and_both_phones_exist() -> None:
    assert arguments([]).ivr == "short" and arguments(["--ivr", "full"]).ivr == "full"
    assert PHONE_OF_IVR == {"short": "uas_answer_dtmf_hangup.xml",
                            "full": "uas_answer_dtmf.xml"}
    hangup = (SIPP_DIR / PHONE_OF_IVR["short"]).read_text()
    assert '<recv request="BYE" timeout="6000" ontimeout="hangup"/>' in hangup
    assert (SIPP_DIR / PHONE_OF_IVR["full"]).is_file()
