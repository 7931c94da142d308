"""Method 2 end to end: the IVR list of the advisors online now, on real Asterisks,
PostgreSQL, the sites' servers and SIPp (carrier A is the customer's phone, the edge's
``operator`` phone the advisor's). The consult flow's menu key 3 reads "1, <name>;
2, <name> ..." for the advisors who can take a call now; the customer keys one and is
put through. Asserted: SIP facts from SIPp's message logs, the RTP both phones get, the
length of the list the customer hears, and the consultation record.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from demo.stack import Stack
from tests.e2e.test_consult_calls import (
    CONFIRM,
    SIP_ADVISOR,
    Admin,
    admin,
    answered_then_hung_up,
    assert_heard_each_other,
    events,
    phones_media,
    pstn,
    record,
    ring_outcomes,
    stack,
)
from tests.harness import asterisk as ast_harness

pytestmark = pytest.mark.e2e
__all__ = ["admin", "stack"]      # the fixtures, as the consultation tests set them up

ONLINE_LIST = "3"                 # the consult flow's menu
#: prompts of known lengths stand in for the advisors' recorded names; the offline
#: advisor's is the longest, so a list that read it would be heard far longer
NAMES = {"first": "cbgw/quantity", "away": "cbgw/closed", "chosen": "cbgw/order-number"}


async def test_online_list_reads_the_two_online_and_connects_the_second(
        stack: Stack, admin: Admin) -> None:
    """Three advisors, the middle one offline: after the call-back the customer keys 3
    and hears the list prompt, "1, <first's name>; 2, <chosen's name>" (the offline one
    not read), waits for its end and keys 2: the second advisor read (the edge's SIP
    phone) is rung with the customer's number, answers, both hear each other, and the
    advisor hangs up after 20 s."""
    await admin.call("PUT", "/v1/advisor-settings", {"ring_timeout_s": 20, "lines": 10,
                                                      "misses_before_break": 3})
    first = await admin.advisor("陽菜", "1212", pstn("+81312340021"),
                                name_prompt=NAMES["first"])
    away = await admin.advisor("蒼", "3434", pstn("+81312340022"), online=False,
                               name_prompt=NAMES["away"])
    chosen = await admin.advisor("朔", "5656", SIP_ADVISOR, name_prompt=NAMES["chosen"])
    # in the list of all advisors the chosen one would be 3; online now, they are 2
    assert await admin.list_keys() == {first: "1", away: "2", chosen: "3"}

    def seconds(sound: str) -> float:
        return ast_harness.sound_seconds(stack.callback_site, "ja", sound)

    names_s = seconds(NAMES["first"]) + seconds(NAMES["chosen"])
    list_s = (seconds("cbgw/advisor-list-online") + seconds("digits/1")
              + seconds("digits/2") + names_s)
    # the customer keys 2 three seconds after the list ends (the node waits 10 s)
    wait_ms = round((list_s + 3) * 50) * 20
    customer = "07011110031"
    await admin.fund(customer)
    wall_minus_monotonic = time.time() - time.monotonic()
    # both phones keep sending PCMU (silence) for 20 s after their keys
    async with stack.carriers(digits=f"{CONFIRM}[1500]{ONLINE_LIST}[{wait_ms}]2",
                              operator="uas_answer_dtmf_bye.xml",
                              pcap_options={"tail_ms": 20_000}) as roles:
        advisor = roles["operator"]
        with phones_media() as (to_advisor, to_customer):
            await asyncio.to_thread(stack.customer_call(customer).wait, 40)
            invite, ok, advisor_bye = await answered_then_hung_up(advisor, 90)
        carrier_invites = roles["carrier-a"].invites_received() + \
            roles["carrier-b"].invites_received()
        made = await record(stack, "+817011110031")
    assert invite.ruri_user == "operator", "the second advisor read is rung at their contact"
    assert invite.from_user is not None and invite.from_user.endswith("7011110031"), \
        "the advisor sees the customer's number"
    assert {m.ruri_user for m in carrier_invites} == {"817011110031"}, \
        "the first advisor (a PSTN number) and the offline one were not rung"
    assert_heard_each_other(ok, wall_minus_monotonic, advisor=to_advisor,
                            customer=to_customer)
    # what the customer heard between keying 3 and keying 2: the list prompt and two
    # names with their keys, not the offline advisor's (longer than all of that); its
    # first sounds may be the menu's last before the key stopped it, and the sound
    # files' own silences at their ends are not heard (seen: 6.9 s of a 7.1 s list)
    keyed = to_customer.keys()
    assert len(keyed) == 3, keyed
    read = [t for t in to_customer.sounding if keyed[1][1] < t < keyed[2][0]]
    assert read, "the customer heard no list"
    heard_s = read[-1] - read[0]
    assert list_s - 1 <= heard_s <= list_s + 1.5, (heard_s, list_s)
    assert keyed[2][0] - read[-1] >= 1.5, "keyed 2 after the list was read to its end"
    assert made["method"] == "online_list" and made["advisor_id"] == chosen
    assert made["end_reason"] == "advisor_hangup" and made["group_id"] is None
    assert ring_outcomes(made) == [(chosen, "answered")]
    on_wire = (advisor_bye.at - ok.at).total_seconds()
    assert abs(made["talk_s"] - on_wire) <= 2, (made["talk_s"], on_wire)
    assert [e for e, _ in await events(stack, chosen)] == [
        "online", "offered", "answered", "ended"]
    assert [e for e, _ in await events(stack, first)] == ["online"]
    assert await events(stack, away) == []
