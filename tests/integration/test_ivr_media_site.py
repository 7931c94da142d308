"""The media API as the callback site's composition root mounts it from ``[media]``: the
``ivr_platform`` migration set applied at start, a guidance the merchant's configured flow
plays kept from deletion, the per-merchant retention, the expiry job and the transcription
worker running in the site (real PostgreSQL, real ffmpeg, PocketSphinx)."""

from __future__ import annotations

import asyncio
import os
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from callback_server.app import POOL_KEY, SPEECH_KEY, create_app
from callback_server.config import CallbackSettings
from callback_server.ivr_flow import FLOWS_DIR
from ivr_platform.media_http import RECORDINGS_KEY
from ivr_platform.tts import CacheLimits
from shared.config import ConfigError
from tests.integration.test_callback_app import settings
from tests.integration.test_ivr_audio import tone
from tests.integration.test_ivr_transcribe import SENTENCE, spoken

pytestmark = pytest.mark.integration

AUTH = {"Authorization": "Bearer test"}     # deploy/callback.example.toml's acme token


def media_settings(pki: Path, db_url: str, tmp_path: Path, **env: str) -> CallbackSettings:
    flows = tmp_path / "flows"
    flows.mkdir(exist_ok=True)
    (flows / "order.toml").write_text((FLOWS_DIR / "order.toml").read_text().replace(
        '"sound:cbgw/goodbye"', '"sound:cbgw-guidance/acme/goodbye"'))
    base = settings(pki, db_url, tmp_path)
    environ = {"CALLBACK__DATABASE__URL": db_url, "CALLBACK__ARI__URL": "http://127.0.0.1:9",
               "CALLBACK__RATES__ENABLED": "false",
               "CALLBACK__PEER__ROUTES": '[{name = "internet", url = "http://127.0.0.1:9"}]',
               "CALLBACK__CALLBACK__FLOWS_DIR": str(flows),
               "CALLBACK__MEDIA__GUIDANCE_DIR": str(tmp_path / "guidance"),
               "CALLBACK__MEDIA__RECORDINGS_DIR": str(tmp_path / "recordings"), **env}
    return CallbackSettings.load(base.path, environ=environ)


async def test_the_site_mounts_guidance_and_recordings_from_its_config(
        pki_dir: Path, pg_url: str, tmp_path: Path) -> None:
    s = media_settings(pki_dir, pg_url, tmp_path, CALLBACK__MEDIA__SWEEP_S="1",
                       CALLBACK__MEDIA__RETENTION_DAYS_BY_MERCHANT='{acme = 7}')
    assert s.media.retention("acme") == timedelta(days=7)
    app = create_app(s, with_ari=False)
    async with TestClient(TestServer(app)) as client:
        client: TestClient[Any, Any]
        pool = app[POOL_KEY]
        assert await pool.fetchval("SELECT to_regclass('recordings')::text") == "recordings"
        for name in ("goodbye", "spare"):
            resp = await client.put(f"/v1/media/guidance/{name}", headers=AUTH,
                                    data=tone(tmp_path / f"{name}.mp3", 1.0).read_bytes())
            assert resp.status == 201, await resp.text()
        resp = await client.delete("/v1/media/guidance/goodbye", headers=AUTH)
        body = await resp.json()
        assert resp.status == 409 and body["error"]["id"] == "guidance-in-use", body
        assert "flow order" in body["error"]["message"]
        assert (await client.delete("/v1/media/guidance/spare", headers=AUTH)).status == 204
        store = app[RECORDINGS_KEY]
        rec = await store.add("acme", tone(tmp_path / "call.wav", 1.0, channels=1),
                              retention=timedelta(seconds=1))
        deadline = asyncio.get_running_loop().time() + 10
        while store.path(rec).exists():
            assert asyncio.get_running_loop().time() < deadline, "the site's expiry job ran not"
            await asyncio.sleep(0.2)
        assert await pool.fetchval("SELECT count(*) FROM recordings") == 0


async def test_the_site_evicts_tts_renders_unused_past_the_age_in_its_sweep(
        pki_dir: Path, pg_url: str, tmp_path: Path) -> None:
    s = media_settings(pki_dir, pg_url, tmp_path, CALLBACK__MEDIA__SWEEP_S="1",
                       CALLBACK__MEDIA__TTS_CACHE_MAX_DAYS="2")
    assert s.media.tts_cache == CacheLimits(max_bytes=512 * 1024 * 1024, max_age_s=2 * 86400)
    app = create_app(s, with_ari=False)
    speech = app[SPEECH_KEY]
    assert speech is not None
    old, recent = speech.directory / f"{'a' * 64}.wav", speech.directory / f"{'b' * 64}.wav"
    for path, days in ((old, 3), (recent, 1)):
        path.write_bytes(b"RIFF" + bytes(4000))
        at = time.time() - days * 86400
        os.utime(path, (at, at))
    async with TestClient(TestServer(app)):
        deadline = asyncio.get_running_loop().time() + 10
        while old.exists():
            assert asyncio.get_running_loop().time() < deadline, "the site's eviction ran not"
            await asyncio.sleep(0.2)
        assert recent.exists()


def test_tts_cache_limits_are_validated(pki_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"media\.tts_cache_max_bytes: 1000 is outside "):
        media_settings(pki_dir, "postgresql://x@127.0.0.1/x", tmp_path,
                       CALLBACK__MEDIA__TTS_CACHE_MAX_BYTES="1000")
    with pytest.raises(ConfigError, match=r"media\.tts_cache_max_days: 0 is outside 1\.\.3650"):
        media_settings(pki_dir, "postgresql://x@127.0.0.1/x", tmp_path,
                       CALLBACK__MEDIA__TTS_CACHE_MAX_DAYS="0")


def test_a_retention_for_a_merchant_that_is_not_one_is_a_config_error(
        pki_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"media\.retention_days_by_merchant\.nobody: "
                                          r"no merchant 'nobody'"):
        media_settings(pki_dir, "postgresql://x@127.0.0.1/x", tmp_path,
                       CALLBACK__MEDIA__RETENTION_DAYS_BY_MERCHANT='{nobody = 7}')
    with pytest.raises(ConfigError, match=r"media\.retention_days: 0 is outside 1\.\.3650"):
        media_settings(pki_dir, "postgresql://x@127.0.0.1/x", tmp_path,
                       CALLBACK__MEDIA__RETENTION_DAYS="0")


async def test_the_site_transcribes_a_recorded_message_after_the_call(
        pki_dir: Path, pg_url: str, tmp_path: Path) -> None:
    """``[media] transcribe``: the site runs the transcription worker (the packaged
    English model); a recording stored as a flow's record node stores it gets its
    transcript, woken by NOTIFY."""
    s = media_settings(pki_dir, pg_url, tmp_path, CALLBACK__MEDIA__TRANSCRIBE="true")
    assert s.media.transcribe and s.media.sphinx_model is None
    app = create_app(s, with_ari=False)
    async with TestClient(TestServer(app)):
        store = app[RECORDINGS_KEY]
        wav = await spoken(tmp_path, SENTENCE)
        recording = await store.add("acme", wav, retention=timedelta(days=1),
                                    edge_call_id="e-site", transcribe=True)
        for _ in range(600):
            stored = await store.get("acme", recording.id)
            if stored is not None and stored.transcript is not None:
                break
            await asyncio.sleep(0.1)
        assert stored is not None and stored.transcript is not None
        assert "tomorrow morning" in stored.transcript


def test_a_sphinx_model_is_named_whole_and_must_exist(pki_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"media\.sphinx_language_model: required with "
                                          r"sphinx_acoustic_model"):
        media_settings(pki_dir, "postgresql://x@127.0.0.1/x", tmp_path,
                       CALLBACK__MEDIA__SPHINX_ACOUSTIC_MODEL=str(tmp_path))
    with pytest.raises(ConfigError, match=r"media\.sphinx_acoustic_model: .*dictionary "
                                          r".*nothing\.dic is missing"):
        media_settings(pki_dir, "postgresql://x@127.0.0.1/x", tmp_path,
                       CALLBACK__MEDIA__SPHINX_ACOUSTIC_MODEL=str(tmp_path),
                       CALLBACK__MEDIA__SPHINX_LANGUAGE_MODEL=str(tmp_path),
                       CALLBACK__MEDIA__SPHINX_DICTIONARY=str(tmp_path / "nothing.dic"))
