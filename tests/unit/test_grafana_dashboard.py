"""deploy/grafana/cbgw.json reads only metrics the servers export: every ``cbgw_*`` name
in its queries is a sample of a metric registered by the two sites (shared.metrics,
edge_server.metrics, callback_server.metrics, ivr_platform.metrics, billing.metrics) or of a
scrape-time reading."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from billing.metrics import BILLING_STATE, billing
from callback_server.guard.reading import GUARD_TRIPS
from callback_server.metrics import callback
from callback_server.queue_reading import CALLBACK_QUEUE
from edge_server.metrics import edge
from ivr_platform.metrics import ivr
from shared.metrics import PROCESS, common
from shared.metrics_http import OUTBOX_BACKLOG

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "cbgw.json"
NAME = re.compile(r"\bcbgw_[a-z0-9_]+")
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"),
            "gauge": ("",)}


def exported() -> set[str]:
    """The sample names a scrape of both sites can hold."""
    common(), edge(), callback(), ivr(), billing()
    names = {family.name + suffix for family in PROCESS.collect()
             for suffix in SUFFIXES[family.type]}
    for reading in (OUTBOX_BACKLOG, CALLBACK_QUEUE, BILLING_STATE, GUARD_TRIPS):
        names.update(reading.names)
    return names | {"cbgw_metrics_reading_up"}


def queries(node: Any) -> Iterator[str]:
    """Every PromQL text in the dashboard: panel targets and template variable queries."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("expr", "definition") and isinstance(value, str):
                yield value
            elif key == "query" and isinstance(value, str | dict):
                yield from ([value] if isinstance(value, str) else queries(value))
            else:
                yield from queries(value)
    elif isinstance(node, list):
        for item in node:
            yield from queries(item)


def test_every_metric_the_dashboard_reads_is_exported() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    used = {name for text in queries(dashboard) for name in NAME.findall(text)}
    assert len(used) >= 20, used                 # the parse found the queries
    assert used - exported() == set()


def test_every_call_metric_is_on_the_dashboard() -> None:
    """A metric with a merchant label that no panel reads is a metric nobody watches."""
    dashboard = json.loads(DASHBOARD.read_text())
    text = " ".join(queries(dashboard))
    common(), edge(), callback(), ivr(), billing()
    by_merchant = {family.name for family in PROCESS.collect()
                   if any("merchant" in getattr(c, "_labelnames", ())
                          for c in [PROCESS._names_to_collectors.get(family.name + s)
                                    for s in SUFFIXES[family.type]] if c is not None)}
    assert by_merchant, "no metric with a merchant label was found"
    assert {name for name in by_merchant if name not in text} == set()
