"""The sweep's split of each call-back's hang-up -> INVITE into stages
(:mod:`bench._sweep_stages`): the points from SIPp, the two databases and the callback
server's log, joined by the customer's number, and the stage and per-window lines."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from bench._sweep_stages import Stages, log_points

T0 = datetime(2026, 12, 6, 20, 0, tzinfo=UTC)


def at(ms: float) -> datetime:
    return T0 + timedelta(milliseconds=ms)


def log_line(ms: float, message: str, request: str | None) -> str:
    record = {"ts": at(ms).strftime("%Y-%m-%dT%H:%M:%S.") + f"{at(ms).microsecond // 1000:03d}Z",
              "level": "INFO", "logger": "callback.worker", "message": message}
    if request is not None:
        record["request_id"] = request
    return json.dumps(record)


def test_log_points_keep_each_requests_first_claim_and_originate(tmp_path: Path) -> None:
    log = tmp_path / "callback.log"
    log.write_text("\n".join([
        log_line(100, "job claimed, round 1/1: flow order (configured file), routes ['b']",
                 "cb-1"),
        log_line(150, "originated leg-1 via PJSIP/+8190@carrier-b", "cb-1"),
        log_line(900, "originated leg-2 via PJSIP/+8190@carrier-a", "cb-1"),   # a later leg
        log_line(200, "originated leg-9 via PJSIP/x", None),                    # no request
        "not json: job claimed",
        log_line(300, "leg-1 answered", "cb-1"),
    ]) + "\n")
    assert log_points([log]) == {"cb-1": {"claimed": at(100), "originated": at(150)}}


def test_stages_per_call_back_and_per_window() -> None:
    # two call-backs 6 s apart (two windows); the second waited 900 ms more for its claim
    hung = {"8190": at(0), "8191": at(6000)}
    invited = {"8190": at(120), "8191": at(7020), "8199": at(50)}     # 8199 was not hung up
    edge = [{"caller": "+8190", "hungup_at": at(-2), "released_at": at(5),
             "delivered_at": at(40)},
            {"caller": "+8191", "hungup_at": at(5998), "released_at": at(6005),
             "delivered_at": at(6030)}]
    callback = [{"callback_id": "cb-0", "caller": "+8190", "accepted_at": at(20),
                 "leg_row": at(60)},
                {"callback_id": "cb-1", "caller": "+8191", "accepted_at": at(6020),
                 "leg_row": at(6960)}]
    logged = {"cb-0": {"claimed": at(50), "originated": at(100)},
              "cb-1": {"claimed": at(6950), "originated": at(7000)}}
    stages = Stages.build(hung, invited, edge, callback, logged)
    assert set(stages.complete()) == {"8190", "8191"}
    assert stages.delivered_after_intake_ms == [10.0, 20.0]
    lines = stages.lines()
    assert lines[0].startswith("stages of hang-up -> INVITE, 2 of 2 call-backs")
    by_stage = {line.split("  ")[1].strip(): line.split()[-3:] for line in lines[1:9]}
    # p50 (the lower of two), p99 (the higher), mean
    assert by_stage["486 -> edge_hungup"] == ["-2.0", "-2.0", "-2.0"]
    assert by_stage["intake -> claimed"] == ["30.0", "930.0", "480.0"]
    assert by_stage["originated -> invite"] == ["20.0", "20.0", "20.0"]
    assert lines[8].split()[-3:] == ["120.0", "1020.0", "570.0"]          # the total
    windows = [line for line in lines if line.startswith("      0 s") or
               line.startswith("      5 s")]
    assert len(windows) == 2
    assert windows[0].split()[2:5] == ["1", "120", "/"]
    assert windows[1].split()[2:4] == ["1", "1020"]


def test_a_call_back_missing_a_point_is_left_out_and_none_says_so() -> None:
    stages = Stages.build({"8190": at(0)}, {"8190": at(100)}, [], [], {})
    assert stages.complete() == {}
    assert stages.lines() == ["stages: no call-back with every point (1 called back)"]
