"""The SIPp trace reader the e2e tests assert on: a role's dialogs are its own.

A BYE that Asterisk retransmits (Timer F, 32 s) for a call whose SIPp has gone
reaches the next SIPp bound to the same port; it must not be read as a BYE on
that role's call (CI saw a forced-end test read a stray BYE 11 s before the call's).
"""

from __future__ import annotations

from tests.harness.sipp import own_dialogs, parse_message_log

SEP = "----------------------------------------------- 2026-12-05 06:00:{:06.3f}"


def block(second: float, direction: str, first_line: str, call_id: str, to: str) -> str:
    method = "BYE" if first_line.startswith("SIP") else first_line.split()[0]
    return "\n".join([SEP.format(second), f"UDP message {direction} [100] bytes :", "",
                      first_line, "Via: SIP/2.0/UDP 127.0.0.1:5260",
                      "From: <sip:a@127.0.0.1>;tag=f1", f"To: {to}", f"Call-ID: {call_id}",
                      f"CSeq: 1 {method}",
                      "Content-Length: 0", "", ""])


TRACE = "".join([
    block(1.0, "received", "OPTIONS sip:127.0.0.1:15070 SIP/2.0", "q1", "<sip:x@127.0.0.1>"),
    block(2.0, "received", "BYE sip:127.0.0.1:15070 SIP/2.0", "old", "<sip:x@127.0.0.1>;tag=t9"),
    block(2.1, "sent", "SIP/2.0 481 Call/Transaction Does Not Exist", "old",
          "<sip:x@127.0.0.1>;tag=t9"),
    block(3.0, "received", "INVITE sip:817011110021@127.0.0.1:15070 SIP/2.0", "mine",
          "<sip:817011110021@127.0.0.1>"),
    block(9.0, "received", "BYE sip:127.0.0.1:15070 SIP/2.0", "mine",
          "<sip:817011110021@127.0.0.1>;tag=t1"),
])


def test_the_trace_parses_in_order() -> None:
    messages = parse_message_log(TRACE)
    assert [(m.direction, m.method or m.status, m.call_id) for m in messages] == [
        ("received", "OPTIONS", "q1"), ("received", "BYE", "old"), ("sent", 481, "old"),
        ("received", "INVITE", "mine"), ("received", "BYE", "mine")]


def test_a_stray_bye_and_its_answer_are_not_the_roles_dialogs() -> None:
    mine = own_dialogs(parse_message_log(TRACE))
    assert [(m.method or m.status, m.call_id) for m in mine] == [
        ("INVITE", "mine"), ("BYE", "mine")]
    bye = next(m for m in mine if m.method == "BYE")
    assert bye.at.second == 9
