"""The verify backend (libsodium) agrees with the key backend (cryptography/OpenSSL)."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidSignature
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.signing import (
    HEADER_SIGNATURE,
    BadSignature,
    Signer,
    SigningKey,
    Verifier,
    load_public_key,
    signed_bytes,
)

KEY = SigningKey.generate("edge-sign-1")
OTHER = SigningKey.generate("edge-sign-1")  # same key id, different key
NOW = 1_800_000_000.0


def _verifier(*keys: SigningKey) -> Verifier:
    return Verifier({k.key_id: k.public() for k in keys}, clock=lambda: NOW)


@settings(max_examples=200)
@given(body=st.binary(max_size=2048), flip=st.integers(min_value=-1, max_value=63))
def test_same_verdict_as_openssl(body: bytes, flip: int) -> None:
    """A signature verifies here exactly when OpenSSL's Ed25519 accepts it."""
    headers = Signer([KEY], clock=lambda: NOW).headers("POST", "/v1/link/x", body,
                                                       message_id="m-1")
    sig = bytearray(base64.b64decode(headers[HEADER_SIGNATURE].partition(",")[2]))
    if flip >= 0:
        sig[flip] ^= 0x01
    headers[HEADER_SIGNATURE] = "v1a," + base64.b64encode(bytes(sig)).decode()
    data = signed_bytes("m-1", int(NOW), "POST", "/v1/link/x", body)
    try:
        KEY.public().verify(bytes(sig), data)
        openssl_ok = True
    except InvalidSignature:
        openssl_ok = False
    try:
        _verifier(KEY).verify("POST", "/v1/link/x", body, headers)
        ours_ok = True
    except BadSignature:
        ours_ok = False
    assert ours_ok == openssl_ok
    assert ours_ok == (flip < 0)


@pytest.mark.parametrize("length", [0, 1, 63, 65, 128])
def test_wrong_signature_length_is_refused(length: int) -> None:
    headers = Signer([KEY], clock=lambda: NOW).headers("POST", "/v1/link/x", b"{}")
    real = base64.b64decode(headers[HEADER_SIGNATURE].partition(",")[2])
    # A truncated or padded signature must not shift bytes between signature and message.
    forged = (real + b"{}" * 64)[:length]
    headers[HEADER_SIGNATURE] = "v1a," + base64.b64encode(forged).decode()
    with pytest.raises(BadSignature):
        _verifier(KEY).verify("POST", "/v1/link/x", b"{}", headers)


def test_a_key_replaced_in_the_trust_list_is_used_at_once() -> None:
    """The raw-key cache follows the trust list (same key id, new key object)."""
    trusted = {KEY.key_id: KEY.public()}
    verifier = Verifier(trusted, clock=lambda: NOW)
    good = Signer([KEY], clock=lambda: NOW).headers("POST", "/v1/link/x", b"a")
    assert verifier.verify("POST", "/v1/link/x", b"a", good) == good["webhook-id"]
    trusted[KEY.key_id] = OTHER.public()
    with pytest.raises(BadSignature):
        verifier.verify("POST", "/v1/link/x", b"a", good)
    other = Signer([OTHER], clock=lambda: NOW).headers("POST", "/v1/link/x", b"a")
    assert verifier.verify("POST", "/v1/link/x", b"a", other) == other["webhook-id"]


def test_keys_loaded_from_pem_files_verify(tmp_path: Path) -> None:
    directory = tmp_path
    (directory / "edge-sign-1.key").write_bytes(KEY.private_pem())
    (directory / "edge-sign-1.pub").write_bytes(KEY.public_pem())
    loaded = SigningKey.load(directory / "edge-sign-1.key")
    verifier = Verifier({"edge-sign-1": load_public_key(directory / "edge-sign-1.pub")},
                        clock=lambda: NOW)
    headers = Signer([loaded], clock=lambda: NOW).headers("PUT", "/v1/link/y", b"body")
    assert verifier.verify("PUT", "/v1/link/y", b"body", headers) == headers["webhook-id"]
