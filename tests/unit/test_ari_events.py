"""Decoding of ARI events, using JSON recorded from Asterisk 22.10.1 on this platform."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import pytest

from shared.ari import (
    Channel,
    ChannelDestroyed,
    ChannelDtmfReceived,
    ChannelHangupRequest,
    ChannelStateChange,
    ChannelVarset,
    Dial,
    PlaybackFinished,
    PlaybackStarted,
    StasisEnd,
    StasisStart,
    Unknown,
    channel_ids,
    decode_event,
    decode_message,
)
from shared.ari.models import parse_timestamp

# --- recorded with tests/harness (SIPp customer -> edge; callback -> carrier-a 503, carrier-b)
EDGE_STASIS_START = r"""{"type":"StasisStart","timestamp":"2026-11-22T02:34:27.214+0000","args":["inbound"],"channel":{"id":"cbgw-edge-1795314867.5","name":"PJSIP/carrier-in-00000005","state":"Ring","protocol_id":"1-20776@127.0.0.2","caller":{"name":"","number":"09012345678"},"connected":{"name":"","number":""},"accountcode":"","dialplan":{"context":"from-carrier","exten":"0120123456","priority":2,"app_name":"Stasis","app_data":"edge,inbound"},"creationtime":"2026-11-22T02:34:27.213+0000","language":"en"},"asterisk_id":"02:fc:00:00:00:01","application":"edge"}"""  # noqa: E501

EDGE_PLAYBACK_STARTED = r"""{"type":"PlaybackStarted","timestamp":"2026-11-22T02:34:27.215+0000","playback":{"id":"pb-1","media_uri":"sound:cbgw/received","target_uri":"channel:cbgw-edge-1795314867.5","language":"en","state":"playing"},"asterisk_id":"02:fc:00:00:00:01","application":"edge"}"""  # noqa: E501

EDGE_VARSET = r"""{"variable":"RTPAUDIOQOS","value":"ssrc=1410177666;themssrc=0;lp=0;rxjitter=0.000000;rxcount=0;txjitter=0.000000;txcount=16;rlp=0;rtt=0.000000;rxmes=0.000000;txmes=0.000000","type":"ChannelVarset","timestamp":"2026-11-22T02:34:27.516+0000","channel":{"id":"cbgw-edge-1795314867.5","name":"PJSIP/carrier-in-00000005","state":"Ring","protocol_id":"1-20776@127.0.0.2","caller":{"name":"","number":"09012345678"},"connected":{"name":"","number":""},"accountcode":"","dialplan":{"context":"from-carrier","exten":"0120123456","priority":2,"app_name":"Stasis","app_data":"edge,inbound"},"creationtime":"2026-11-22T02:34:27.213+0000","language":"en"},"asterisk_id":"02:fc:00:00:00:01","application":"edge"}"""  # noqa: E501

EDGE_HANGUP_REQUEST = r"""{"cause":32,"soft":true,"type":"ChannelHangupRequest","timestamp":"2026-11-22T02:34:27.517+0000","channel":{"id":"cbgw-edge-1795314867.5","name":"PJSIP/carrier-in-00000005","state":"Ring","protocol_id":"1-20776@127.0.0.2","caller":{"name":"","number":"09012345678"},"connected":{"name":"","number":""},"accountcode":"","dialplan":{"context":"from-carrier","exten":"0120123456","priority":2,"app_name":"Stasis","app_data":"edge,inbound"},"creationtime":"2026-11-22T02:34:27.213+0000","language":"en"},"asterisk_id":"02:fc:00:00:00:01","application":"edge"}"""  # noqa: E501

EDGE_STASIS_END = r"""{"type":"StasisEnd","timestamp":"2026-11-22T02:34:27.517+0000","channel":{"id":"cbgw-edge-1795314867.5","name":"PJSIP/carrier-in-00000005","state":"Ring","protocol_id":"1-20776@127.0.0.2","caller":{"name":"","number":"09012345678"},"connected":{"name":"","number":""},"accountcode":"","dialplan":{"context":"from-carrier","exten":"0120123456","priority":2,"app_name":"Stasis","app_data":"edge,inbound"},"creationtime":"2026-11-22T02:34:27.213+0000","language":"en"},"asterisk_id":"02:fc:00:00:00:01","application":"edge"}"""  # noqa: E501

CALLBACK_DIAL = r"""{"type":"Dial","timestamp":"2026-11-22T02:34:25.100+0000","dialstatus":"","forward":"","dialstring":"09012345678@carrier-a","peer":{"id":"rec-a","name":"PJSIP/carrier-a-00000010","state":"Down","protocol_id":"fb2ebc18-21e2-493f-b3da-dda571b36e65","caller":{"name":"","number":"0120123456"},"connected":{"name":"","number":"0120123456"},"accountcode":"","dialplan":{"context":"from-outside","exten":"s","priority":1,"app_name":"AppDial2","app_data":"(Outgoing Line)"},"creationtime":"2026-11-22T02:34:25.099+0000","language":"en"},"asterisk_id":"02:fc:00:00:00:01","application":"callback"}"""  # noqa: E501

CALLBACK_DESTROYED_503 = r"""{"type":"ChannelDestroyed","timestamp":"2026-11-22T02:34:25.101+0000","cause":34,"cause_txt":"Circuit/channel congestion","tech_cause":503,"channel":{"id":"rec-a","name":"PJSIP/carrier-a-00000010","state":"Down","protocol_id":"fb2ebc18-21e2-493f-b3da-dda571b36e65","caller":{"name":"","number":"0120123456"},"connected":{"name":"","number":"0120123456"},"accountcode":"","dialplan":{"context":"from-outside","exten":"s","priority":1,"app_name":"AppDial2","app_data":"(Outgoing Line)"},"creationtime":"2026-11-22T02:34:25.099+0000","language":"en"},"asterisk_id":"02:fc:00:00:00:01","application":"callback"}"""  # noqa: E501

CALLBACK_STATE_RINGING = r"""{"type":"ChannelStateChange","timestamp":"2026-11-22T02:34:25.102+0000","channel":{"id":"rec-b","name":"PJSIP/carrier-b-00000011","state":"Ringing","protocol_id":"99ef5772-b28b-4ac3-85c3-18ec656dcc43","caller":{"name":"","number":"0120123456"},"connected":{"name":"","number":"0120123456"},"accountcode":"","dialplan":{"context":"from-outside","exten":"s","priority":1,"app_name":"AppDial2","app_data":"(Outgoing Line)"},"creationtime":"2026-11-22T02:34:25.100+0000","language":"en"},"asterisk_id":"02:fc:00:00:00:01","application":"callback"}"""  # noqa: E501

CALLBACK_STASIS_START = r"""{"type":"StasisStart","timestamp":"2026-11-22T02:34:25.103+0000","args":["cb-1","first"],"channel":{"id":"rec-b","name":"PJSIP/carrier-b-00000011","state":"Up","protocol_id":"99ef5772-b28b-4ac3-85c3-18ec656dcc43","caller":{"name":"","number":"0120123456"},"connected":{"name":"","number":"0120123456"},"accountcode":"","dialplan":{"context":"from-outside","exten":"s","priority":1,"app_name":"Stasis","app_data":"callback,cb-1,first"},"creationtime":"2026-11-22T02:34:25.100+0000","language":"en"},"asterisk_id":"02:fc:00:00:00:01","application":"callback"}"""  # noqa: E501

CALLBACK_DTMF = r"""{"type":"ChannelDtmfReceived","timestamp":"2026-11-22T02:34:25.463+0000","digit":"1","duration_ms":160,"channel":{"id":"rec-b","name":"PJSIP/carrier-b-00000011","state":"Up","protocol_id":"99ef5772-b28b-4ac3-85c3-18ec656dcc43","caller":{"name":"","number":"0120123456"},"connected":{"name":"","number":"0120123456"},"accountcode":"","dialplan":{"context":"from-outside","exten":"s","priority":1,"app_name":"Stasis","app_data":"callback,cb-1,first"},"creationtime":"2026-11-22T02:34:25.100+0000","language":"en"},"asterisk_id":"02:fc:00:00:00:01","application":"callback"}"""  # noqa: E501


def test_inbound_stasis_start() -> None:
    event = decode_message(EDGE_STASIS_START)
    assert isinstance(event, StasisStart)
    assert event.args == ("inbound",)
    ch = event.channel
    assert ch.id == "cbgw-edge-1795314867.5"
    assert ch.name == "PJSIP/carrier-in-00000005"
    assert ch.state == "Ring" and not ch.is_up
    assert ch.caller_number == "09012345678"
    assert ch.exten == "0120123456" and ch.context == "from-carrier" and ch.priority == 2
    assert ch.protocol_id == "1-20776@127.0.0.2"
    assert ch.created_at == datetime(2026, 11, 22, 2, 34, 27, 213000, tzinfo=UTC)
    assert event.timestamp == datetime(2026, 11, 22, 2, 34, 27, 214000, tzinfo=UTC)


def test_originated_stasis_start_carries_app_args() -> None:
    event = decode_message(CALLBACK_STASIS_START)
    assert isinstance(event, StasisStart)
    assert event.args == ("cb-1", "first")
    assert event.channel.is_up
    assert event.channel.connected_number == "0120123456"


def test_playback_started_targets_channel() -> None:
    event = decode_message(EDGE_PLAYBACK_STARTED)
    assert isinstance(event, PlaybackStarted)
    assert event.playback.id == "pb-1"
    assert event.playback.media_uri == "sound:cbgw/received"
    assert event.playback.channel_id == "cbgw-edge-1795314867.5"
    assert channel_ids(event) == ("cbgw-edge-1795314867.5",)


def test_playback_finished_on_bridge_has_no_channel() -> None:
    event = decode_event({"type": "PlaybackFinished",
                          "playback": {"id": "p", "target_uri": "bridge:b1", "state": "done"}})
    assert isinstance(event, PlaybackFinished)
    assert event.playback.channel_id is None
    assert channel_ids(event) == ()


def test_hangup_request_and_stasis_end() -> None:
    request = decode_message(EDGE_HANGUP_REQUEST)
    assert isinstance(request, ChannelHangupRequest)
    assert request.cause == 32 and request.soft
    end = decode_message(EDGE_STASIS_END)
    assert isinstance(end, StasisEnd)
    assert end.channel.id == "cbgw-edge-1795314867.5"


def test_failed_originate_destroyed_with_congestion() -> None:
    event = decode_message(CALLBACK_DESTROYED_503)
    assert isinstance(event, ChannelDestroyed)
    assert (event.cause, event.cause_txt, event.tech_cause) == (
        34, "Circuit/channel congestion", 503)
    assert event.channel.id == "rec-a"


def test_dial_routes_to_peer() -> None:
    event = decode_message(CALLBACK_DIAL)
    assert isinstance(event, Dial)
    assert event.peer.id == "rec-a" and event.dialstatus == "" and event.caller is None
    assert channel_ids(event) == ("rec-a",)


def test_dtmf() -> None:
    event = decode_message(CALLBACK_DTMF)
    assert isinstance(event, ChannelDtmfReceived)
    assert (event.digit, event.duration_ms, event.channel.id) == ("1", 160, "rec-b")


def test_state_change_and_varset() -> None:
    state = decode_message(CALLBACK_STATE_RINGING)
    assert isinstance(state, ChannelStateChange) and state.channel.state == "Ringing"
    varset = decode_message(EDGE_VARSET)
    assert isinstance(varset, ChannelVarset) and varset.variable == "RTPAUDIOQOS"
    global_var = decode_event({"type": "ChannelVarset", "variable": "X", "value": "1"})
    assert isinstance(global_var, ChannelVarset) and global_var.channel is None
    assert channel_ids(global_var) == ()


def test_unmodelled_type_is_unknown_with_raw() -> None:
    raw = {"type": "DeviceStateChanged", "device_state": {"name": "x", "state": "BUSY"}}
    event = decode_event(raw)
    assert event == Unknown("DeviceStateChanged", raw)
    assert channel_ids(event) == ()


@pytest.mark.parametrize("raw", [
    {"type": "StasisStart"},                                   # no channel
    {"type": "StasisStart", "channel": "not-an-object"},
    {"type": "ChannelDtmfReceived", "channel": {"id": "c"}},    # no digit
    {"type": "PlaybackStarted", "playback": None},
    {"type": "Dial"},                                          # no peer
    {"no_type": True},
])
def test_malformed_events_become_unknown(raw: dict[str, object]) -> None:
    assert isinstance(decode_event(raw), Unknown)


@pytest.mark.parametrize("frame", ["not json", "[1, 2]", b"\xff\xfe"])
def test_bad_frames_become_unknown(frame: str | bytes) -> None:
    assert isinstance(decode_message(frame), Unknown)


def test_lenient_channel_decoding() -> None:
    ch = Channel.from_json({"id": "c1", "caller": None, "dialplan": {"priority": "x"},
                            "creationtime": "garbage", "channelvars": {"A": 1}})
    assert ch == Channel(id="c1", variables={"A": "1"})


@pytest.mark.parametrize(("text", "expected"), [
    ("2026-11-22T02:34:27.214+0000", datetime(2026, 11, 22, 2, 34, 27, 214000, tzinfo=UTC)),
    ("2026-11-22T11:34:27.214+0900",
     datetime(2026, 11, 22, 11, 34, 27, 214000, tzinfo=timezone(timedelta(hours=9)))),
    ("2026-11-22T02:34:27.214-0130",
     datetime(2026, 11, 22, 2, 34, 27, 214000, tzinfo=timezone(-timedelta(hours=1, minutes=30)))),
    ("2026-11-22T02:34:27+0000", datetime(2026, 11, 22, 2, 34, 27, tzinfo=UTC)),
    ("2026-11-22T02:34:27.214Z", datetime(2026, 11, 22, 2, 34, 27, 214000, tzinfo=UTC)),
    ("garbage", None), ("", None), (1700000000, None), (None, None),
])
def test_ari_timestamps(text: object, expected: datetime | None) -> None:
    """ARI's form with any offset, with or without fractions; anything else is None."""
    parsed = parse_timestamp(text)
    assert parsed == expected
    assert parsed is None or parsed.utcoffset() == expected.utcoffset()  # type: ignore[union-attr]


def test_recorded_fixtures_round_trip_as_json() -> None:
    for text in (EDGE_STASIS_START, CALLBACK_DTMF, CALLBACK_DESTROYED_503):
        assert not isinstance(decode_event(json.loads(text)), Unknown)
