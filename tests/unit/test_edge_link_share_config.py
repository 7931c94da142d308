"""``[edge] store_reserve_connections``: the pool connections the link's messages never
take, kept for the inbound calls; validated against ``[database] max_connections``."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_server.config import EdgeSettings
from edge_server.link_share import DEFAULT_RESERVE
from shared.config import ConfigError

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = (REPO / "deploy/edge.example.toml").read_text()
KEY = "store_reserve_connections = 3"


def config(tmp_path: Path, reserve: str | None, max_connections: int = 10) -> Path:
    assert KEY in EXAMPLE and "max_connections = 10\n" in EXAMPLE
    text = EXAMPLE.replace(KEY, "" if reserve is None else f"store_reserve_connections = "
                           f"{reserve}").replace("max_connections = 10\n",
                                                 f"max_connections = {max_connections}\n")
    path = tmp_path / "edge.toml"
    path.write_text(text)
    return path


def test_the_link_takes_the_pool_less_the_reserve(tmp_path: Path) -> None:
    assert EdgeSettings.load(config(tmp_path, None), {}).link_connections() == \
        10 - DEFAULT_RESERVE
    assert EdgeSettings.load(config(tmp_path, "9"), {}).link_connections() == 1
    assert EdgeSettings.load(config(tmp_path, "2", max_connections=20), {}
                             ).link_connections() == 18


@pytest.mark.parametrize(("reserve", "max_connections", "says"), [
    ("10", 10, "10 must be below [database] max_connections (10)"),
    (None, 3, "3 must be below [database] max_connections (3)"),   # the default, too
    ("0", 10, "0 is outside 1.."),
    ('"two"', 10, "expected an integer"),
])
def test_a_reserve_leaving_the_link_nothing_is_refused_naming_the_key(
        tmp_path: Path, reserve: str | None, max_connections: int, says: str) -> None:
    with pytest.raises(ConfigError) as info:
        EdgeSettings.load(config(tmp_path, reserve, max_connections), {})
    assert "edge.store_reserve_connections" in str(info.value)
    assert says in str(info.value), str(info.value)
