"""Keys and certificates for the link between the sites.

``python -m shared.pki init --dir DIR --site edge --site callback`` makes, in DIR:

* ``ca.pem`` / ``ca.key``: a private certificate authority (ECDSA P-256);
* ``<site>.pem`` / ``<site>.key``: a TLS certificate for each site, valid for
  both server and client authentication (mutual TLS), issued for the site's
  name (CN and a DNS name: its identity, which the peer pins, ``[peer]
  identity``) and the names and addresses given by ``--san`` (default
  ``localhost`` and ``127.0.0.1``);
* ``<site>-sign-1.key`` / ``.pub``: the site's Ed25519 signing key pair; the
  key id is the file stem (``edge-sign-1``).

Idempotent: existing files are kept, so running it twice changes nothing.
``rotate --site edge`` adds the next signing key (``edge-sign-2``) for a
rotation overlap; the old one stays until you remove it from both configs.

TLS contexts for aiohttp are built by :func:`server_context` and
:func:`client_context`.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import os
import re
import ssl
import sys
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from shared.signing import SigningKey

DEFAULT_SANS = ("localhost", "127.0.0.1")
_VALID_DAYS = 825


def _write_private(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    os.chmod(path, 0o600)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _load_key(path: Path) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError):
        raise ValueError(f"{path}: not an unencrypted PEM private key") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{path}: not an EC private key")
    return key


def ensure_ca(directory: Path, name: str = "callback-gateway private CA") -> list[Path]:
    cert_path, key_path = directory / "ca.pem", directory / "ca.key"
    if cert_path.exists() and key_path.exists():
        return []
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder()
            .subject_name(subject).issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                         crl_sign=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    _write_private(key_path, _pem_key(key))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return [cert_path, key_path]


def _san(names: Sequence[str]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = []
    for name in names:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            entries.append(x509.DNSName(name))
    return x509.SubjectAlternativeName(entries)


def ensure_site_cert(directory: Path, site: str, sans: Sequence[str] = DEFAULT_SANS
                     ) -> list[Path]:
    cert_path, key_path = directory / f"{site}.pem", directory / f"{site}.key"
    if cert_path.exists() and key_path.exists():
        return []
    try:
        ca_cert = x509.load_pem_x509_certificate((directory / "ca.pem").read_bytes())
    except ValueError:
        raise ValueError(f"{directory / 'ca.pem'}: not a PEM certificate") from None
    ca_key = _load_key(directory / "ca.key")
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, site)]))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=_VALID_DAYS))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_san(list(dict.fromkeys([site, *sans]))), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                  ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    _write_private(key_path, _pem_key(key))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return [cert_path, key_path]


def signing_key_paths(directory: Path, site: str) -> list[Path]:
    pattern = re.compile(rf"^{re.escape(site)}-sign-(\d+)\.key$")
    found = [(int(m.group(1)), p) for p in directory.glob(f"{site}-sign-*.key")
             if (m := pattern.match(p.name))]
    return [p for _, p in sorted(found)]


def new_signing_key(directory: Path, site: str) -> list[Path]:
    existing = signing_key_paths(directory, site)
    number = 1 + max((int(p.stem.rsplit("-", 1)[1]) for p in existing), default=0)
    key = SigningKey.generate(f"{site}-sign-{number}")
    key_path = directory / f"{key.key_id}.key"
    pub_path = directory / f"{key.key_id}.pub"
    _write_private(key_path, key.private_pem())
    pub_path.write_bytes(key.public_pem())
    return [key_path, pub_path]


def init(directory: Path, sites: Sequence[str], sans: Sequence[str] = DEFAULT_SANS
         ) -> list[Path]:
    """Create what is missing; return the files written."""
    directory.mkdir(parents=True, exist_ok=True)
    written = ensure_ca(directory)
    for site in sites:
        written += ensure_site_cert(directory, site, sans)
        if not signing_key_paths(directory, site):
            written += new_signing_key(directory, site)
    return written


def server_context(cert: Path, key: Path, ca: Path, *, require_client_cert: bool = True
                   ) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(ca))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(str(cert), str(key))
    ctx.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
    return ctx


def client_context(ca: Path, cert: Path | None = None, key: Path | None = None
                   ) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca))
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert is not None and key is not None:
        ctx.load_cert_chain(str(cert), str(key))
    return ctx


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shared.pki", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p_init = sub.add_parser("init", help="create the CA, site certificates and signing keys")
    p_init.add_argument("--dir", type=Path, required=True)
    p_init.add_argument("--site", action="append", required=True, help="edge, callback ...")
    p_init.add_argument("--san", action="append", help="DNS name or IP for the certificates")
    p_rot = sub.add_parser("rotate", help="add the next signing key for a site")
    p_rot.add_argument("--dir", type=Path, required=True)
    p_rot.add_argument("--site", required=True)
    args = parser.parse_args(argv)
    try:
        if args.command == "init":
            written = init(args.dir, args.site, args.san or DEFAULT_SANS)
        else:
            written = new_signing_key(args.dir, args.site)
    except OSError as exc:          # the directory cannot be made, read or written
        print(f"error: {exc.filename or args.dir}: {exc.strerror}", file=sys.stderr)
        return 1
    except ValueError as exc:       # a file there is not what its name says, a bad --san
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for path in written:
        print(f"wrote {path}")
    if not written:
        print(f"{args.dir}: nothing to do, all keys and certificates exist")
    return 0


if __name__ == "__main__":
    sys.exit(main())
