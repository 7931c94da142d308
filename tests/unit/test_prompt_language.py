"""The system prompts in both languages, and the merchant's language in its config."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from callback_server.config import PROMPT_PREFIX, CallbackSettings, _media
from callback_server.ivr_flow import FLOWS_DIR, load_named
from edge_server.config import EdgeSettings
from edge_server.flow_messages import PROMPT_DIAL_186, PROMPT_RECEIVED
from ivr_platform.prompts import SYSTEM_PROMPTS
from shared.config import ConfigError
from shared.language import Language

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = {"edge": (EdgeSettings, REPO / "deploy/edge.example.toml"),
            "callback": (CallbackSettings, REPO / "deploy/callback.example.toml")}
JAPANESE = re.compile(r"[\u3040-\u30ff\u4e00-\u9fff]")


def test_every_prompt_has_a_japanese_and_an_english_text() -> None:
    for name, prompt in SYSTEM_PROMPTS.items():
        assert JAPANESE.search(prompt.ja), (name, prompt.ja)   # written in Japanese
        assert prompt.en.strip() and prompt.en.isascii(), (name, prompt.en)
        assert prompt.text(Language.JAPANESE) == prompt.ja
        assert prompt.text(Language.ENGLISH) == prompt.en


def test_every_prompt_the_edge_and_the_shipped_flows_play_is_in_the_table() -> None:
    played = {PROMPT_RECEIVED, PROMPT_DIAL_186}
    for path in FLOWS_DIR.glob("*.toml"):
        played |= _media(load_named(path.stem))
    names = {m.removeprefix(PROMPT_PREFIX) for m in played if m.startswith(PROMPT_PREFIX)}
    assert names <= set(SYSTEM_PROMPTS), names - set(SYSTEM_PROMPTS)


@pytest.mark.parametrize("site", EXAMPLES)
def test_a_merchant_speaks_japanese_unless_its_config_says_english(
        site: str, tmp_path: Path) -> None:
    kind, example = EXAMPLES[site]
    text = example.read_text()
    path = tmp_path / f"{site}.toml"
    path.write_text(text.replace('language = "ja"', "# language unset"))
    assert kind.load(path, {}).merchants[0].language is Language.JAPANESE
    path.write_text(text.replace('language = "ja"', 'language = "en"'))
    assert kind.load(path, {}).merchants[0].language is Language.ENGLISH


@pytest.mark.parametrize("site", EXAMPLES)
def test_an_unknown_language_is_refused_naming_the_key(site: str, tmp_path: Path) -> None:
    kind, example = EXAMPLES[site]
    text = example.read_text().replace('language = "ja"', 'language = "jp"')
    path = tmp_path / f"{site}.toml"
    path.write_text(text)
    line = next(i for i, t in enumerate(text.splitlines(), 1)
                if t.startswith('language = "jp"'))   # the merchant's key, not a comment
    with pytest.raises(ConfigError) as err:
        kind.load(path, {})
    assert str(err.value) == (f"{path}:{line}: merchants[0].language: "
                              "expected one of en, ja, got 'jp'")


def test_the_edge_hands_the_merchant_language_to_its_flow(tmp_path: Path) -> None:
    path = tmp_path / "edge.toml"
    path.write_text(EXAMPLES["edge"][1].read_text().replace('language = "ja"',
                                                            'language = "en"'))
    settings = EdgeSettings.load(path, {})
    assert {m.language for m in settings.merchant_settings().values()} == {Language.ENGLISH}
