from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.signing import (
    HEADER_ID,
    HEADER_SIGNATURE,
    HEADER_TIMESTAMP,
    BadSignature,
    BadTimestamp,
    MissingSignature,
    Signer,
    SigningKey,
    UnknownKey,
    Verifier,
)

OLD = SigningKey.generate("edge-sign-1")
NEW = SigningKey.generate("edge-sign-2")
NOW = 1_800_000_000.0


def clock(t: float = NOW) -> Callable[[], float]:
    return lambda: t


def verifier(*keys: SigningKey, t: float = NOW) -> Verifier:
    return Verifier({k.key_id: k.public() for k in keys}, clock=clock(t))


def test_round_trip() -> None:
    headers = Signer([OLD], clock=clock()).headers("POST", "/v1/link/callbacks", b"{}")
    assert (
        verifier(OLD).verify("POST", "/v1/link/callbacks", b"{}", headers) == headers["webhook-id"]
    )


@given(st.binary(min_size=1, max_size=200), st.integers(min_value=0))
def test_any_flipped_bit_in_the_body_is_refused(body: bytes, position: int) -> None:
    headers = Signer([OLD], clock=clock()).headers("POST", "/p", body)
    i = position % (len(body) * 8)
    tampered = bytearray(body)
    tampered[i // 8] ^= 1 << (i % 8)
    with pytest.raises(BadSignature):
        verifier(OLD).verify("POST", "/p", bytes(tampered), headers)


def test_path_method_and_timestamp_are_covered() -> None:
    headers = Signer([OLD], clock=clock()).headers("POST", "/v1/link/callbacks", b"{}")
    with pytest.raises(BadSignature):
        verifier(OLD).verify("POST", "/v1/link/events", b"{}", headers)
    with pytest.raises(BadSignature):
        verifier(OLD).verify("PUT", "/v1/link/callbacks", b"{}", headers)
    moved = dict(headers, **{HEADER_TIMESTAMP: str(int(NOW) + 1)})
    with pytest.raises(BadSignature):
        verifier(OLD).verify("POST", "/v1/link/callbacks", b"{}", moved)


@pytest.mark.parametrize(("skew", "ok"), [(299, True), (-299, True), (301, False), (-301, False)])
def test_clock_skew_window(skew: int, ok: bool) -> None:
    headers = Signer([OLD], clock=clock(NOW + skew)).headers("POST", "/p", b"x")
    if ok:
        verifier(OLD).verify("POST", "/p", b"x", headers)
    else:
        with pytest.raises(BadTimestamp):
            verifier(OLD).verify("POST", "/p", b"x", headers)


def test_rotation_overlap_and_revocation() -> None:
    both = Signer([OLD, NEW], clock=clock()).headers("POST", "/p", b"x")
    verifier(OLD).verify("POST", "/p", b"x", both)  # an old verifier accepts
    verifier(NEW).verify("POST", "/p", b"x", both)  # a new verifier accepts
    only_old = Signer([OLD], clock=clock()).headers("POST", "/p", b"x")
    with pytest.raises(UnknownKey):  # OLD revoked: removed from the trust list
        verifier(NEW).verify("POST", "/p", b"x", only_old)


def test_missing_or_garbled_headers() -> None:
    with pytest.raises(MissingSignature):
        verifier(OLD).verify("POST", "/p", b"x", {})
    headers = Signer([OLD], clock=clock()).headers("POST", "/p", b"x")
    with pytest.raises(BadSignature):
        verifier(OLD).verify("POST", "/p", b"x", dict(headers, **{HEADER_SIGNATURE: "v1a,AAAA"}))


@pytest.mark.parametrize("message_id", ["\udcff", "caf\u00e9", "tab\tid"])
def test_a_message_id_that_is_not_printable_ascii_is_refused(message_id: str) -> None:
    """An id header with bytes a server decodes as surrogates (0xff) must not reach the
    signed-bytes encoder: no signature is checked, whatever the timestamp and key say."""
    headers = Signer([OLD], clock=clock()).headers("POST", "/p", b"x")
    with pytest.raises(MissingSignature, match="printable ASCII"):
        verifier(OLD).verify("POST", "/p", b"x", dict(headers, **{HEADER_ID: message_id}))
