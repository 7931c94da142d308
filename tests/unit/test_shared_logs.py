"""shared.logs: the JSON and text lines, and the call context bound through asyncio tasks."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_server.__main__ import main as edge_main
from shared import logs
from shared.server_cli import parser_for
from tests.harness.json_log import Lines, json_log

TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


@pytest.fixture
def log() -> Iterator[tuple[logging.Logger, Lines]]:
    """A logger writing JSON lines through the handler ``configure`` installs."""
    with json_log("test.shared_logs") as logged:
        yield logging.getLogger("test.shared_logs"), logged


def test_a_line_outside_any_call_has_the_base_fields_only(
        log: tuple[logging.Logger, Lines]) -> None:
    logger, captured = log
    logger.info("listening on %s", 8443)
    [line] = captured()
    assert set(line) == {"ts", "level", "logger", "message"}
    assert TS.match(line["ts"]), line["ts"]
    assert (line["level"], line["logger"], line["message"]) == \
        ("INFO", "test.shared_logs", "listening on 8443")


def test_bound_fields_are_on_every_line_and_gone_after_the_block(
        log: tuple[logging.Logger, Lines]) -> None:
    logger, captured = log
    with logs.bind(call_id="edge-1", request_id="m-1"):
        logger.info("stored")
        logs.update(merchant="acme")
        logger.warning("released")
        with logs.bind(request_id="m-2"):
            logger.info("inner")
        logger.info("after inner")
    logger.info("outside")
    got = [{k: line.get(k) for k in ("message", *logs.FIELDS)} for line in captured()]
    assert got == [
        {"message": "stored", "call_id": "edge-1", "request_id": "m-1", "merchant": None},
        {"message": "released", "call_id": "edge-1", "request_id": "m-1", "merchant": "acme"},
        {"message": "inner", "call_id": "edge-1", "request_id": "m-2", "merchant": "acme"},
        {"message": "after inner", "call_id": "edge-1", "request_id": "m-1",
         "merchant": "acme"},
        {"message": "outside", "call_id": None, "request_id": None, "merchant": None},
    ]


def test_an_exception_is_the_exc_field_with_its_traceback(
        log: tuple[logging.Logger, Lines]) -> None:
    logger, captured = log
    try:
        raise RuntimeError("pool exhausted")
    except RuntimeError:
        with logs.bind(call_id="edge-2"):
            logger.exception("store failed")
    [line] = captured()
    assert line["message"] == "store failed" and line["call_id"] == "edge-2"
    assert line["exc"].startswith("Traceback (most recent call last):")
    assert "RuntimeError: pool exhausted" in line["exc"]


def test_an_explicit_extra_field_wins_over_the_context(
        log: tuple[logging.Logger, Lines]) -> None:
    logger, captured = log
    with logs.bind(call_id="edge-3", merchant="acme"):
        logger.info("swept", extra={"call_id": "edge-other"})
    [line] = captured()
    assert (line["call_id"], line["merchant"]) == ("edge-other", "acme")


async def test_a_task_started_in_a_bound_scope_carries_it(
        log: tuple[logging.Logger, Lines]) -> None:
    logger, captured = log

    async def child() -> None:
        await asyncio.sleep(0)
        logger.info("child")

    with logs.bind(call_id="edge-4", merchant="acme"):
        task = asyncio.create_task(child())
    logger.info("parent, after the block")
    await task
    by_message = {line["message"]: line for line in captured()}
    assert by_message["child"]["call_id"] == "edge-4"
    assert by_message["child"]["merchant"] == "acme"
    assert "call_id" not in by_message["parent, after the block"]


async def test_concurrent_calls_do_not_see_each_others_context(
        log: tuple[logging.Logger, Lines]) -> None:
    """Each call binds at the top of its own task, learns its merchant later (update) and
    interleaves with the others at every await: each line names its own call only."""
    logger, captured = log
    both_bound = asyncio.Barrier(2)

    async def call(n: int) -> None:
        with logs.bind(call_id=f"edge-{n}"):
            logger.info("arrived %d", n)
            await both_bound.wait()
            logs.update(merchant=f"merchant-{n}")
            await asyncio.sleep(0)
            await asyncio.create_task(asyncio.sleep(0))
            logger.info("stored %d", n)
            await both_bound.wait()
            logger.info("released %d", n)

    await asyncio.gather(call(1), call(2))
    logger.info("no call")
    lines = captured()
    assert len(lines) == 7
    for line in lines[:-1]:
        n = line["message"].split()[-1]
        assert line["call_id"] == f"edge-{n}", line
        if not line["message"].startswith("arrived"):
            assert line["merchant"] == f"merchant-{n}", line
        else:
            assert "merchant" not in line, line
    assert set(lines[-1]) == {"ts", "level", "logger", "message"}


def test_the_text_format_shows_the_context() -> None:
    stream = io.StringIO()
    out = logs.handler("text", stream)
    record = logging.LogRecord("callback.worker", logging.INFO, __file__, 1,
                               "job %s claimed", ("cb-1",), None)
    with logs.bind(call_id="edge-5", request_id="cb-1", merchant="acme"):
        out.handle(record)
    assert re.fullmatch(r"\S+Z INFO callback.worker \[call=edge-5 request=cb-1 "
                        r"merchant=acme\]: job cb-1 claimed\n", stream.getvalue())


def test_configure_refuses_an_unknown_format_or_level() -> None:
    with pytest.raises(ValueError, match="log format 'xml'"):
        logs.configure("INFO", "xml")
    with pytest.raises(ValueError):
        logs.configure("FOO", "json")


def test_serve_takes_json_by_default_and_text_on_request(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LOG_FORMAT", raising=False)
    assert parser_for("edge").parse_args(["serve", "--config", "x"]).log_format == "json"
    assert parser_for("edge").parse_args(
        ["serve", "--config", "x", "--log-format", "text"]).log_format == "text"
    monkeypatch.setenv("LOG_FORMAT", "text")
    assert parser_for("edge").parse_args(["serve", "--config", "x"]).log_format == "text"


@pytest.mark.parametrize(("argv", "env", "says"), [
    (["--log-format", "xml"], None, "argument --log-format: invalid choice: 'xml'"),
    ([], "xml", "LOG_FORMAT 'xml': one of json, text"),
])
def test_an_unknown_log_format_is_a_usage_error(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        argv: list[str], env: str | None, says: str) -> None:
    if env is None:
        monkeypatch.delenv("LOG_FORMAT", raising=False)
    else:
        monkeypatch.setenv("LOG_FORMAT", env)
    with pytest.raises(SystemExit) as exited:
        edge_main(["serve", "--config", "edge.toml", *argv])
    assert exited.value.code == 2
    assert says in capsys.readouterr().err


async def test_a_task_started_unbound_does_not_name_the_call_that_started_it(
        log: tuple[logging.Logger, Lines]) -> None:
    """A batcher started by the first request serves every later one: its lines must not
    carry the first request's call."""
    logger, captured = log

    async def shared_batcher() -> None:
        logger.info("batch committed")

    with logs.bind(call_id="edge-6", merchant="acme"):
        await asyncio.create_task(shared_batcher(), context=logs.unbound())
        logger.info("still the call")
    first, second = captured()
    assert set(first) == {"ts", "level", "logger", "message"}
    assert (second["call_id"], second["merchant"]) == ("edge-6", "acme")


def _old_line(record: logging.LogRecord) -> str:
    """The line as ``json.dumps`` of the fields (what the formatter wrote before it
    wrote the text itself)."""
    at = datetime.fromtimestamp(record.created, UTC)
    line = {"ts": f"{at:%Y-%m-%dT%H:%M:%S}.{int(record.msecs):03d}Z",
            "level": record.levelname, "logger": record.name, "message": record.getMessage()}
    for name in logs.FIELDS:
        value = getattr(record, name, None)
        if value is not None:
            line[name] = str(value)
    if record.exc_text:
        line["exc"] = record.exc_text
    return json.dumps(line)


TEXT = st.text(st.characters(exclude_categories=["Cs"]), max_size=40)


@settings(max_examples=400, deadline=None)
@given(created=st.integers(0, 4 * 10**15).map(lambda us: us / 1e6),
       name=st.text("abcdé.-_\"\\", min_size=1, max_size=20),
       level=st.sampled_from([logging.DEBUG, logging.INFO, logging.WARNING, logging.ERROR]),
       message=TEXT, fields=st.fixed_dictionaries({}, optional={
           f: st.one_of(TEXT, st.integers()) for f in logs.FIELDS}),
       exc=st.one_of(st.none(), TEXT))
def test_a_json_line_is_the_text_json_dumps_makes_of_its_fields(
        created: float, name: str, level: int, message: str, fields: dict[str, object],
        exc: str | None) -> None:
    """(Whole microseconds: ``datetime`` rounds a time 0.5 µs before a second up to it,
    which put the line a second ahead with its milliseconds at 999.)"""
    record = logging.LogRecord(name, level, "f.py", 1, "%s", (message,), None)
    record.created, record.msecs = created, int((created - int(created)) * 1000) + 0.0
    record.exc_text = exc
    for key, value in fields.items():
        setattr(record, key, value)
    formatter = logs.JsonFormatter()
    assert formatter.format(record) == _old_line(record)
    assert formatter.format(record) == _old_line(record)     # the logger's part kept


def test_lines_of_one_second_and_the_next_have_their_own_times() -> None:
    records = []
    for created in (1733350905.25, 1733350905.75, 1733350906.0, 1733350905.5):
        record = logging.LogRecord("t", logging.INFO, "f.py", 1, "m", (), None)
        record.created, record.msecs = created, int((created - int(created)) * 1000) + 0.0
        records.append(logs.timestamp(record))
    assert records == ["2024-12-04T22:21:45.250Z", "2024-12-04T22:21:45.750Z",
                       "2024-12-04T22:21:46.000Z", "2024-12-04T22:21:45.500Z"]


def test_configure_leaves_out_of_records_what_no_line_shows() -> None:
    saved = (logging._srcfile, logging.logThreads, logging.logProcesses,
             logging.logMultiprocessing)
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        logs.configure("INFO", "json")
        record = logging.getLogger("t").makeRecord("t", logging.INFO, "(unknown file)", 0,
                                                   "m", (), None)
        assert (record.thread, record.process, record.processName) == (None, None, None)
        assert logging._srcfile is None
    finally:
        (logging._srcfile, logging.logThreads, logging.logProcesses,
         logging.logMultiprocessing) = saved
        root.handlers[:] = handlers
        root.setLevel(level)
