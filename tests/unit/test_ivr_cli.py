"""``python -m ivr_platform``: hours and sms-count from a shell (say: test_ivr_tts.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ivr_platform.cli import main

HOURS = """\
[hours]
monday = ["09:00-18:00"]
tuesday = ["09:00-18:00"]

[[hours.numbers]]
number = "03-1234-5678"
tuesday = []
"""


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_hours_on_a_holiday(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "hours.toml").write_text(HOURS)
    code, out, _ = _run(capsys, "hours", str(tmp_path / "hours.toml"), "--at",
                        "2026-05-04T10:00")
    assert code == 0
    assert json.loads(out) == {
        "at": "2026-05-04T10:00:00+09:00", "open": False, "status": "holiday",
        "reason": "holiday: みどりの日", "until": None,
        "next_opening": "2026-05-11T09:00:00+09:00",
        "announcement": "本日は祝日のため、休業しております。次の営業は、五月十一日月曜日、"
                        "午前九時からです。"}


def test_hours_of_a_number_in_english(tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "hours.toml").write_text(HOURS)
    code, out, _ = _run(capsys, "hours", str(tmp_path / "hours.toml"), "--number",
                        "03-1234-5678", "--at", "2026-12-08T01:00Z", "--lang", "en")
    result = json.loads(out)
    assert code == 0
    assert (result["status"], result["reason"]) == ("closed_weekday", "closed on Tuesday")
    assert result["announcement"] == ("We are closed today. We open on Monday, December "
                                      "fourteenth at nine a.m.")
    code, out, _ = _run(capsys, "hours", str(tmp_path / "hours.toml"),
                        "--at", "2026-12-08T10:00")
    assert json.loads(out)["open"] is True and json.loads(out)["until"] == (
        "2026-12-08T18:00:00+09:00")


@pytest.mark.parametrize(("args", "message"), [
    (["--at", "soon"], "error: --at: not an ISO 8601 timestamp: 'soon'"),
    (["--number", "03-12x4"], "error: --number: number must be digits"),
])
def test_bad_options_are_named(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                               args: list[str], message: str) -> None:
    (tmp_path / "hours.toml").write_text(HOURS)
    code, out, err = _run(capsys, "hours", str(tmp_path / "hours.toml"), *args)
    assert (code, out) == (2, "")
    assert err.startswith(message)


def test_a_config_error_names_file_line_and_key(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "hours.toml"
    path.write_text(HOURS.replace('tuesday = ["09:00-18:00"]', 'tuesday = ["9-18"]'))
    code, _, err = _run(capsys, "hours", str(path))
    assert code == 2
    assert err == f"error: {path}:3: hours.tuesday[0]: expected HH:MM-HH:MM, got '9-18'\n"


def test_sms_count(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _run(capsys, "sms-count", "あ" * 71)
    assert code == 0
    assert json.loads(out) == {"encoding": "ucs2", "units": 71, "segments": 2}
