"""Ed25519 message signatures for the link between the sites.

Standard Webhooks style, with the method and path also covered::

    webhook-id:        <message id>
    webhook-timestamp: <unix seconds>
    webhook-key-id:    <key id> [<key id> ...]          one per signature
    webhook-signature: v1a,<base64 sig> [v1a,<sig> ...]  several during rotation

    signed bytes = f"{id}.{timestamp}.{METHOD}.{path}.{sha256_hex(raw body)}"

The raw body bytes are signed, never re-serialised JSON. A verifier takes keys
only from its own trust list (never from the request), accepts ±300 s of clock
skew, and passes if any (key id, signature) pair verifies with a trusted key.
Replay protection (message ids remembered for 24 h) lives with the receiver's
database, see :mod:`shared.link`.

Verification runs on libsodium (PyNaCl), about twice as
fast as OpenSSL's Ed25519 on the machines measured (``git show 7d988d0:bench/README.md``,
"Signed intake"); keys, signing and the PKI stay on ``cryptography``. Both take the
same raw 32-byte public keys; libsodium is the stricter of the two (it also
refuses small-order keys and non-canonical encodings, which no honest signer
produces).

Errors (all ``SignatureError``, each with a stable ``error_id``)::

    SignatureError
      ├── MissingSignature      signature-missing      no or incomplete headers
      ├── BadTimestamp          signature-timestamp    not an integer / outside the window
      ├── UnknownKey            signature-unknown-key  no key id in the trust list
      └── BadSignature          signature-invalid      no signature verifies
"""

from __future__ import annotations

import base64
import hashlib
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from nacl.bindings import crypto_sign_open as _sodium_open  # libsodium: the verify backend
from nacl.exceptions import CryptoError as _SodiumError

HEADER_ID = "webhook-id"
HEADER_TIMESTAMP = "webhook-timestamp"
HEADER_KEY_ID = "webhook-key-id"
HEADER_SIGNATURE = "webhook-signature"
#: Longest message id (``webhook-id``, or a batch message's ``message_id``) a receiver takes.
MAX_MESSAGE_ID = 128
DEFAULT_TOLERANCE_S = 300
SCHEME = "v1a"
SIGNATURE_BYTES = 64


class SignatureError(Exception):
    error_id = "signature-error"


class MissingSignature(SignatureError):
    error_id = "signature-missing"


class BadTimestamp(SignatureError):
    error_id = "signature-timestamp"


class UnknownKey(SignatureError):
    error_id = "signature-unknown-key"


class BadSignature(SignatureError):
    error_id = "signature-invalid"


def signed_bytes(message_id: str, timestamp: int, method: str, path: str, body: bytes) -> bytes:
    digest = hashlib.sha256(body).hexdigest()
    return f"{message_id}.{timestamp}.{method.upper()}.{path}.{digest}".encode()


def _check_message_id(mid: str) -> None:
    """A ``webhook-id`` is printable ASCII (it is signed as UTF-8 bytes; a header byte the
    server could not decode must not reach the encoder) of at most MAX_MESSAGE_ID."""
    if len(mid) > MAX_MESSAGE_ID:
        raise MissingSignature(f"webhook-id is longer than {MAX_MESSAGE_ID} characters")
    if not (mid.isascii() and mid.isprintable()):
        raise MissingSignature("webhook-id must be printable ASCII")


@dataclass(frozen=True, slots=True)
class SigningKey:
    key_id: str
    private: Ed25519PrivateKey

    @classmethod
    def generate(cls, key_id: str) -> SigningKey:
        return cls(key_id, Ed25519PrivateKey.generate())

    @classmethod
    def load(cls, path: Path, key_id: str | None = None) -> SigningKey:
        """Load a PEM private key; the key id defaults to the file stem."""
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise ValueError(f"{path}: not an Ed25519 private key")
        return cls(key_id or path.stem, key)

    def public(self) -> Ed25519PublicKey:
        return self.private.public_key()

    def private_pem(self) -> bytes:
        return self.private.private_bytes(serialization.Encoding.PEM,
                                          serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption())

    def public_pem(self) -> bytes:
        return self.public().public_bytes(serialization.Encoding.PEM,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)


def load_public_key(path: Path) -> Ed25519PublicKey:
    key = serialization.load_pem_public_key(path.read_bytes())
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(f"{path}: not an Ed25519 public key")
    return key


@dataclass(frozen=True, slots=True)
class Signer:
    """Signs with every active key (two during a rotation overlap)."""

    keys: Sequence[SigningKey]
    clock: Callable[[], float] = time.time

    def __post_init__(self) -> None:
        if not self.keys:
            raise ValueError("a Signer needs at least one signing key")

    def headers(self, method: str, path: str, body: bytes, *, message_id: str | None = None,
                timestamp: int | None = None) -> dict[str, str]:
        mid = message_id or str(uuid.uuid4())
        ts = int(self.clock()) if timestamp is None else timestamp
        data = signed_bytes(mid, ts, method, path, body)
        sigs = [f"{SCHEME},{base64.b64encode(k.private.sign(data)).decode()}" for k in self.keys]
        return {
            HEADER_ID: mid,
            HEADER_TIMESTAMP: str(ts),
            HEADER_KEY_ID: " ".join(k.key_id for k in self.keys),
            HEADER_SIGNATURE: " ".join(sigs),
        }


@dataclass(frozen=True, slots=True)
class Verifier:
    """Verifies against a local trust list ``{key_id: public key}``.

    Revoking a key means removing it from the trust list.
    """

    trusted: Mapping[str, Ed25519PublicKey]
    tolerance_s: int = DEFAULT_TOLERANCE_S
    clock: Callable[[], float] = field(default=time.time)
    #: key id -> (the trusted key object, its raw bytes), filled on first use; the identity
    #: check keeps it right if the caller swaps a key in ``trusted``.
    _raw: dict[str, tuple[Ed25519PublicKey, bytes]] = field(
        default_factory=dict, init=False, repr=False, compare=False)

    def verify(self, method: str, path: str, body: bytes, headers: Mapping[str, str]) -> str:
        """Return the message id, or raise a ``SignatureError``."""
        mid = headers.get(HEADER_ID, "").strip()
        ts_text = headers.get(HEADER_TIMESTAMP, "").strip()
        key_ids = headers.get(HEADER_KEY_ID, "").split()
        sigs = headers.get(HEADER_SIGNATURE, "").split()
        if not mid or not ts_text or not key_ids or not sigs:
            raise MissingSignature("request is not signed: webhook-id, webhook-timestamp, "
                                   "webhook-key-id and webhook-signature are required")
        _check_message_id(mid)
        try:
            ts = int(ts_text)
        except ValueError:
            raise BadTimestamp(f"webhook-timestamp is not an integer: {ts_text[:20]!r}") from None
        skew = abs(self.clock() - ts)
        if skew > self.tolerance_s:
            raise BadTimestamp(f"webhook-timestamp is {int(skew)} s away from now "
                               f"(allowed ±{self.tolerance_s} s)")
        if len(key_ids) != len(sigs):
            raise MissingSignature("webhook-key-id and webhook-signature must have as many entries")
        data = signed_bytes(mid, ts, method, path, body)
        known = False
        for key_id, sig in zip(key_ids, sigs, strict=True):
            public = self.trusted.get(key_id)
            if public is None:
                continue
            known = True
            scheme, _, encoded = sig.partition(",")
            if scheme != SCHEME:
                continue
            try:
                raw_sig = base64.b64decode(encoded, validate=True)
            except ValueError:
                continue
            if self._check(key_id, public, raw_sig, data):
                return mid
        if not known:
            raise UnknownKey(f"no trusted key among {', '.join(key_ids)[:200]}")
        raise BadSignature("signature does not verify")

    def _check(self, key_id: str, public: Ed25519PublicKey, sig: bytes, data: bytes) -> bool:
        if len(sig) != SIGNATURE_BYTES:
            return False
        cached = self._raw.get(key_id)
        if cached is None or cached[0] is not public:
            cached = (public, public.public_bytes_raw())
            self._raw[key_id] = cached
        try:
            _sodium_open(sig + data, cached[1])
        except (_SodiumError, ValueError, TypeError):
            return False
        return True
