"""The media API over real HTTP (aiohttp test server), real ffmpeg and a real PostgreSQL:
guidance uploaded as the raw body, converted, listed, replaced and deleted per merchant
token, bad files refused with their ids; recordings listed with signed links that fetch
the audio until they expire (tampered or expired: 403), and deleted by the site's expiry
job with their files once past the retention."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import asyncpg
import pytest
from aiohttp import ClientResponse, web
from aiohttp.test_utils import TestClient, TestServer

import ivr_platform
from ivr_platform.audio import AudioLimits
from ivr_platform.media_config import MediaSettings
from ivr_platform.media_http import RECORDINGS_KEY, install
from ivr_platform.recordings import LinkSigner, RecordingStore, audio_path, link_for
from shared.db import create_pool, migrate_url, package_migrations
from shared.http import TOKENS_KEY, MerchantTokens, error_middleware
from tests.integration.test_ivr_audio import ffmpeg, fmt, tone

pytestmark = pytest.mark.integration

ACME, BENTO = "acme-media-token", "bento-media-token"
AUTH = {"Authorization": f"Bearer {ACME}"}
BENTO_AUTH = {"Authorization": f"Bearer {BENTO}"}
SECRET = b"s" * 32


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@pytest.fixture(scope="module")
async def pool(pg_url: str) -> AsyncIterator[asyncpg.Pool]:
    await migrate_url(pg_url, [package_migrations("ivr_platform", ivr_platform.__file__)])
    p = await create_pool(pg_url, max_size=5)
    yield p
    await p.close()


@pytest.fixture
async def clean(pool: asyncpg.Pool) -> asyncpg.Pool:
    await pool.execute("TRUNCATE recordings CASCADE")
    return pool


def settings(tmp_path: Path, **extra: Any) -> MediaSettings:
    secret = tmp_path / "link.secret"
    secret.write_bytes(SECRET)
    values: dict[str, Any] = {
        "guidance_dir": tmp_path / "guidance", "recordings_dir": tmp_path / "recordings",
        "limits": AudioLimits(max_bytes=400_000, max_seconds=30), "link_secret_file": secret,
        "public_url": "https://callback.example.com", "link_ttl_s": 600, **extra}
    return MediaSettings(**values)


def app_over(pool: asyncpg.Pool, media: MediaSettings) -> web.Application:
    app = web.Application(middlewares=[error_middleware])
    app[TOKENS_KEY] = MerchantTokens([("acme", digest(ACME)), ("bento", digest(BENTO))])
    install(app, media, lambda _: pool,
            lambda merchant, name: ["order"] if (merchant, name) == ("acme", "in-use") else [])
    return app


@pytest.fixture
async def client(clean: asyncpg.Pool, tmp_path: Path) -> AsyncIterator[TestClient[Any, Any]]:
    async with TestClient(TestServer(app_over(clean, settings(tmp_path)))) as c:
        yield c


async def ok(resp: ClientResponse, status: int = 200) -> Any:
    body = await resp.json()
    assert resp.status == status, body
    return body


async def refused(resp: ClientResponse, status: int) -> tuple[str, str]:
    body = await resp.json()
    assert resp.status == status, body
    assert set(body) == {"error"}
    return body["error"]["id"], body["error"]["message"]


async def test_an_uploaded_mp3_is_converted_listed_replaced_and_deleted(
        client: TestClient[Any, Any], tmp_path: Path) -> None:
    mp3 = tone(tmp_path / "welcome.mp3", 2.0, extra=("-c:a", "libmp3lame"))
    stored = await ok(await client.put("/v1/media/guidance/welcome", data=mp3.read_bytes(),
                                       headers=AUTH), 201)
    assert stored["media"] == "sound:cbgw-guidance/acme/welcome"
    assert abs(stored["seconds"] - 2.0) < 0.05 and abs(stored["loudness_lufs"] + 23) <= 1
    assert stored["source_format"] == "mp3"
    wav = tmp_path / "guidance" / "acme" / "welcome.wav"
    assert fmt(wav)[:3] == (1, 2, 8000)
    m4a = tone(tmp_path / "longer.m4a", 4.0, extra=("-c:a", "aac"))
    replaced = await ok(await client.put("/v1/media/guidance/welcome", data=m4a.read_bytes(),
                                         headers=AUTH), 200)
    assert abs(replaced["seconds"] - 4.0) < 0.05 and replaced["source_format"] == "mp4"
    listed = await ok(await client.get("/v1/media/guidance", headers=AUTH))
    assert [g["name"] for g in listed["items"]] == ["welcome"]
    assert (await ok(await client.get("/v1/media/guidance", headers=BENTO_AUTH)))["items"] == []
    assert await ok(await client.get("/v1/media/guidance/welcome", headers=AUTH)) == replaced
    assert (await refused(await client.get("/v1/media/guidance/welcome", headers=BENTO_AUTH),
                          404))[0] == "not-found"
    assert (await client.delete("/v1/media/guidance/welcome", headers=AUTH)).status == 204
    assert not wav.exists()
    assert (await refused(await client.delete("/v1/media/guidance/welcome", headers=AUTH),
                          404))[0] == "not-found"
    assert not any((tmp_path / "guidance" / ".uploads").iterdir())   # no upload left behind


async def test_bad_uploads_name_what_is_wrong(client: TestClient[Any, Any],
                                              tmp_path: Path) -> None:
    async def put(data: bytes, name: str = "welcome") -> tuple[str, str, int]:
        resp = await client.put(f"/v1/media/guidance/{name}", data=data, headers=AUTH)
        body = await resp.json()
        return body["error"]["id"], body["error"]["message"], resp.status

    error_id, message, status = await put(b"\x00garbage bytes, not audio" * 100)
    assert (error_id, status) == ("audio-unreadable", 422) and "not an audio file" in message
    silent = tmp_path / "silent.wav"
    ffmpeg("-f", "lavfi", "-i", "anullsrc=r=8000:cl=mono", "-t", "2", str(silent))
    assert (await put(silent.read_bytes()))[::2] == ("audio-silent", 422)
    ogg = tone(tmp_path / "tone.ogg", 1.0, extra=("-c:a", "libvorbis"))
    assert (await put(ogg.read_bytes()))[::2] == ("audio-unsupported", 415)
    long = tone(tmp_path / "long.mp3", 40.0, channels=1, extra=("-c:a", "libmp3lame",
                                                                "-b:a", "32k"))
    error_id, message, status = await put(long.read_bytes())
    assert (error_id, status) == ("audio-too-long", 422) and "at most 30 s" in message
    error_id, message, status = await put(b"\0" * 400_001)
    assert (error_id, status) == ("audio-too-large", 413) and "400000 bytes" in message
    assert (await put(b"RIFF", name="Not%20A%20Name"))[::2] == ("invalid-field", 400)
    assert (await refused(await client.put("/v1/media/guidance/welcome", data=b"x"), 401)
            )[0] == "auth-missing"
    assert (await client.get("/v1/media/guidance", headers=AUTH)).status == 200
    assert not (tmp_path / "guidance" / "acme").exists()


async def test_an_oversized_upload_sent_in_chunks_is_cut_off(
        client: TestClient[Any, Any]) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(10):
            yield b"\0" * 50_000

    resp = await client.put("/v1/media/guidance/big", data=chunks(), headers=AUTH)
    assert (await refused(resp, 413))[0] == "audio-too-large"


async def test_a_guidance_a_flow_plays_is_not_deleted(client: TestClient[Any, Any],
                                                      tmp_path: Path) -> None:
    wav = tone(tmp_path / "x.wav", 1.0)
    await ok(await client.put("/v1/media/guidance/in-use", data=wav.read_bytes(),
                              headers=AUTH), 201)
    error_id, message = await refused(await client.delete("/v1/media/guidance/in-use",
                                                          headers=AUTH), 409)
    assert error_id == "guidance-in-use" and "flow order" in message


async def test_a_guidance_per_language_sits_where_asterisk_looks_for_that_language(
        client: TestClient[Any, Any], tmp_path: Path) -> None:
    """``?language=en``: the English file in ``sounds/en/cbgw-guidance`` beside the file
    for every language (the library is ``sounds/cbgw-guidance``); one media reference."""
    every, english = tone(tmp_path / "ja.wav", 1.0), tone(tmp_path / "en.mp3", 2.0)
    stored = await ok(await client.put("/v1/media/guidance/welcome", data=every.read_bytes(),
                                       headers=AUTH), 201)
    assert stored["language"] is None
    en = await ok(await client.put("/v1/media/guidance/welcome?language=en",
                                   data=english.read_bytes(), headers=AUTH), 201)
    assert (en["media"], en["language"]) == (stored["media"], "en")
    assert abs(en["seconds"] - 2.0) < 0.05
    assert fmt(tmp_path / "en" / "guidance" / "acme" / "welcome.wav")[:3] == (1, 2, 8000)
    assert (tmp_path / "guidance" / "acme" / "welcome.wav").is_file()
    listed = await ok(await client.get("/v1/media/guidance", headers=AUTH))
    assert [(g["name"], g["language"]) for g in listed["items"]] == [
        ("welcome", None), ("welcome", "en")]
    assert await ok(await client.get("/v1/media/guidance/welcome?language=en",
                                     headers=AUTH)) == en
    assert (await refused(await client.get("/v1/media/guidance/welcome?language=ja",
                                           headers=AUTH), 404))[0] == "not-found"
    assert (await refused(await client.get("/v1/media/guidance/welcome?language=fr",
                                           headers=AUTH), 400))[0] == "invalid-field"
    assert (await client.delete("/v1/media/guidance/welcome?language=en",
                                headers=AUTH)).status == 204
    assert not (tmp_path / "en" / "guidance" / "acme" / "welcome.wav").exists()
    assert (await ok(await client.get("/v1/media/guidance/welcome", headers=AUTH))) == stored

    # a guidance a flow plays: a file may go while calls in both languages find another
    # (Asterisk: the call's language, the file for every language, then English's)
    async def put(language: str, audio: bytes) -> None:
        await ok(await client.put(f"/v1/media/guidance/in-use?language={language}",
                                  data=audio, headers=AUTH), 201)

    async def delete(language: str) -> ClientResponse:
        return await client.delete(f"/v1/media/guidance/in-use?language={language}",
                                   headers=AUTH)

    await put("ja", every.read_bytes())
    await put("en", english.read_bytes())
    assert (await delete("ja")).status == 204       # Japanese calls play the English one
    await put("ja", every.read_bytes())
    # without the English file, English calls would find none
    assert (await refused(await delete("en"), 409))[0] == "guidance-in-use"


def recorded(tmp_path: Path, seconds: float = 1.5) -> Path:
    """What Asterisk's record would leave: 8 kHz 16-bit mono WAV."""
    return tone(tmp_path / f"rec-{uuid.uuid4()}.wav", seconds, channels=1,
                extra=("-ar", "8000"))


async def test_a_recording_is_fetched_by_its_signed_link_until_it_expires(
        client: TestClient[Any, Any], clean: asyncpg.Pool, tmp_path: Path) -> None:
    store = client.app[RECORDINGS_KEY]
    source = recorded(tmp_path)
    audio = source.read_bytes()
    rec = await store.add("acme", source, retention=timedelta(days=30), call_id="cb-leg-1",
                          callback_id="cb-1", edge_call_id="edge-1", transcript="もしもし")
    assert not source.exists() and store.path(rec).read_bytes() == audio
    assert (rec.duration_ms, rec.size_bytes) == (1500, len(audio))
    listed = await ok(await client.get("/v1/recordings", headers=AUTH))
    [item] = listed["items"]
    assert (item["id"], item["edge_call_id"], item["transcript"]) == (str(rec.id), "edge-1",
                                                                      "もしもし")
    link = item["link"]
    assert link["url"] == "https://callback.example.com" + link["path"]
    expires_at = datetime.fromisoformat(link["expires_at"])
    assert timedelta(seconds=590) < expires_at - datetime.now(UTC) <= timedelta(seconds=600)
    fetched = await client.get(link["path"])               # the link alone: no token
    assert fetched.status == 200 and fetched.content_type == "audio/wav"
    assert await fetched.read() == audio
    # one character of the signature changed, another recording's path, a later expiry
    path, query = link["path"].split("?")
    params = dict(parse_qsl(query))
    forged = params["signature"][:-1] + ("0" if params["signature"][-1] != "0" else "1")
    for bad in (f"{path}?expires={params['expires']}&signature={forged}",
                f"{audio_path(uuid.uuid4())}?{query}",
                f"{path}?expires={int(params['expires']) + 3600}"
                f"&signature={params['signature']}",
                path, f"{path}?expires=soon&signature={params['signature']}"):
        assert (await refused(await client.get(bad), 403))[0] == "link-invalid", bad
    signer = LinkSigner(SECRET)
    past = signer.link(path, datetime.now(UTC) - timedelta(seconds=1)).path
    error_id, message = await refused(await client.get(past), 403)
    assert error_id == "link-expired" and "expired" in message
    assert (await refused(await client.get(f"/v1/recordings/{rec.id}", headers=BENTO_AUTH),
                          404))[0] == "not-found"
    one = await ok(await client.get(f"/v1/recordings/{rec.id}", headers=AUTH))
    assert one["id"] == str(rec.id) and urlsplit(one["link"]["path"]).path == path
    by_call = await ok(await client.get("/v1/recordings?edge_call_id=edge-2", headers=AUTH))
    assert by_call["items"] == []
    assert (await client.delete(f"/v1/recordings/{rec.id}", headers=AUTH)).status == 204
    assert not store.path(rec).exists()
    assert (await refused(await client.get(link["path"]), 404))[0] == "not-found"
    assert (await refused(await client.get("/v1/recordings/nope", headers=AUTH), 400)
            )[0] == "invalid-field"


async def test_a_link_never_outlives_its_recording(clean: asyncpg.Pool, tmp_path: Path) -> None:
    store = RecordingStore(clean, tmp_path / "recordings")
    rec = await store.add("acme", recorded(tmp_path), retention=timedelta(seconds=60))
    link = link_for(LinkSigner(SECRET), rec, timedelta(hours=1), datetime.now(UTC))
    assert link.expires_at <= rec.expires_at
    with pytest.raises(ValueError, match="not a readable WAV file"):
        garbage = tmp_path / "garbage.wav"
        garbage.write_bytes(b"not a wav")
        await store.add("acme", garbage, retention=timedelta(days=1))
    assert garbage.exists()                               # nothing moved


async def test_the_sites_expiry_job_deletes_expired_recordings_and_their_files(
        clean: asyncpg.Pool, tmp_path: Path) -> None:
    media = settings(tmp_path, sweep_s=0.2)
    app = app_over(clean, media)
    async with TestClient(TestServer(app)) as client:
        store = app[RECORDINGS_KEY]
        short = [await store.add("acme", recorded(tmp_path), retention=timedelta(seconds=1))
                 for _ in range(3)]
        kept = await store.add("bento", recorded(tmp_path), retention=timedelta(days=1))
        assert len((await ok(await client.get("/v1/recordings", headers=AUTH)))["items"]) == 3
        deadline = asyncio.get_running_loop().time() + 10
        while await clean.fetchval("SELECT count(*) FROM recordings") > 1:
            assert asyncio.get_running_loop().time() < deadline, "expiry job did not run"
            await asyncio.sleep(0.2)
        assert [r["id"] for r in await clean.fetch("SELECT id FROM recordings")] == [kept.id]
        assert not any(store.path(r).exists() for r in short)
        assert store.path(kept).exists()
        assert (await ok(await client.get("/v1/recordings", headers=AUTH)))["items"] == []


async def test_expire_removes_rows_whose_files_are_already_gone(
        clean: asyncpg.Pool, tmp_path: Path) -> None:
    store = RecordingStore(clean, tmp_path / "recordings")
    rec = await store.add("acme", recorded(tmp_path), retention=timedelta(seconds=1))
    store.path(rec).unlink()                              # a crash after the unlink
    await clean.execute("UPDATE recordings SET expires_at = created_at + interval '1 ms'")
    assert await store.expire(batch=1) == 1
    assert await clean.fetchval("SELECT count(*) FROM recordings") == 0



async def test_an_upload_that_cannot_be_written_is_503_not_500(
        clean: asyncpg.Pool, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    media = settings(tmp_path, guidance_dir=blocker / "guidance")
    async with TestClient(TestServer(app_over(clean, media))) as client:
        resp = await client.put("/v1/media/guidance/welcome", headers=AUTH,
                                data=tone(tmp_path / "x.wav", 1.0).read_bytes())
        error_id, message = await refused(resp, 503)
        assert error_id == "media-unavailable" and "cannot store the guidance" in message
