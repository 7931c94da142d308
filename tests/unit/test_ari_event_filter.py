"""Each site's ARI event filter is exactly the event types its code reads.

The filter (``EVENTS_USED``, set on the application at every connect) must hold every
type a site's adapters dispatch on, or Asterisk stops sending it and the flows hang;
and no type the site never reads, or Asterisk builds and sends it for nothing. What a
site reads is found in its source: every reference to a modelled event class
(``ari.PlaybackFinished``, or one imported from ``shared.ari``).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import callback_server.stasis
import edge_server.stasis
from shared import ari
from shared.ari import events

REPO = Path(__file__).resolve().parents[2]


def _modelled(name: str) -> bool:
    kind = getattr(events, name, None)
    if not isinstance(kind, type):
        return False
    try:
        ari.event_types(kind)
    except ValueError:
        return False
    return True


MODELLED = frozenset(name for name in ari.__all__ if _modelled(name))


def _is_the_filter(node: ast.AST) -> bool:
    return isinstance(node, ast.Assign) and any(
        isinstance(t, ast.Name) and t.id == "EVENTS_USED" for t in node.targets)


def event_types_read(package: str) -> frozenset[str]:
    """The modelled event types the package's modules name (the filter itself aside)."""
    found: set[str] = set()
    for path in (REPO / package).rglob("*.py"):
        tree = ast.parse(path.read_text(), str(path))
        tree.body = [statement for statement in tree.body if not _is_the_filter(statement)]
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
                    and node.value.id == "ari" and node.attr in MODELLED:
                found.add(node.attr)
            elif isinstance(node, ast.ImportFrom) and node.module in ("shared.ari",
                                                                      "shared.ari.events"):
                found.update(alias.name for alias in node.names if alias.name in MODELLED)
    return frozenset(found)


def test_every_class_of_an_ari_event_type_is_modelled() -> None:
    assert {"StasisStart", "ChannelVarset", "PlaybackFinished", "Dial"} <= MODELLED
    assert "Connected" not in MODELLED and "Unknown" not in MODELLED


@pytest.mark.parametrize(("package", "used"), [
    ("edge_server", edge_server.stasis.EVENTS_USED),
    ("callback_server", callback_server.stasis.EVENTS_USED),
])
def test_the_filter_is_what_the_site_reads(package: str, used: frozenset[str]) -> None:
    read = event_types_read(package)
    assert read - used == set(), "read but filtered out: Asterisk would never send them"
    assert used - read == set(), "allowed but never read: Asterisk would send them for nothing"


def test_the_edge_reads_neither_channel_variables_nor_state_changes() -> None:
    assert edge_server.stasis.EVENTS_USED == {"StasisStart", "StasisEnd", "PlaybackFinished"}


def test_an_unmodelled_type_cannot_be_allowed() -> None:
    with pytest.raises(ValueError, match="Connected"):
        ari.event_types(ari.StasisStart, ari.Connected)


def test_the_application_state_reads_its_filter() -> None:
    state = ari.AppState.from_json({
        "name": "edge", "channel_ids": [], "bridge_ids": [], "endpoint_ids": [],
        "events_allowed": [{"type": "StasisStart"}, {"type": "PlaybackFinished"}, {}],
        "events_disallowed": []})
    assert state.events_allowed == ("PlaybackFinished", "StasisStart")
    assert ari.AppState.from_json({"name": "edge"}).events_allowed == ()
