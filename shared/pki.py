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
``renew --site edge`` issues the site's certificate again, with the same key and
names, once it expires within 60 days (``--within-days``; ``--force``: now); the
server serves it from its next start. Each server reports when the certificate it
serves and the CA it trusts expire (``cbgw_tls_certificate_expiry_timestamp_seconds``).
The CA (ten years) is not renewed here: a new CA means both sites trusting it first.

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
#: ``renew`` issues a site certificate again from this many days before it expires
RENEW_WITHIN_DAYS = 60


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


def load_cert(path: Path) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(path.read_bytes())
    except ValueError:
        raise ValueError(f"{path}: not a PEM certificate") from None


def not_after(path: Path) -> dt.datetime:
    """When the certificate in ``path`` expires (UTC)."""
    return load_cert(path).not_valid_after_utc


def _site_cert(directory: Path, site: str, sans: Sequence[str],
               key: ec.EllipticCurvePublicKey) -> x509.Certificate:
    """A site certificate for ``key``, issued by the CA in ``directory``: the site's name
    (CN and a DNS name) and ``sans``, server and client authentication, :data:`_VALID_DAYS`
    from now."""
    ca_cert = load_cert(directory / "ca.pem")
    ca_key = _load_key(directory / "ca.key")
    now = dt.datetime.now(dt.UTC)
    return (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, site)]))
            .issuer_name(ca_cert.subject)
            .public_key(key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=_VALID_DAYS))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_san(list(dict.fromkeys([site, *sans]))), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                  ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))


def ensure_site_cert(directory: Path, site: str, sans: Sequence[str] = DEFAULT_SANS
                     ) -> list[Path]:
    cert_path, key_path = directory / f"{site}.pem", directory / f"{site}.key"
    if cert_path.exists() and key_path.exists():
        return []
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _site_cert(directory, site, sans, key.public_key())
    _write_private(key_path, _pem_key(key))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return [cert_path, key_path]


def renew_site_cert(directory: Path, site: str, *, within_days: int = RENEW_WITHIN_DAYS,
                    force: bool = False) -> tuple[bool, dt.datetime]:
    """Issue ``site``'s certificate again when it expires within ``within_days`` (or
    ``force``): the same key and names (its SANs as they are), valid :data:`_VALID_DAYS`
    from now, written beside and renamed over ``<site>.pem``, so a server starting
    meanwhile reads the old one or the new one. Whether it was renewed, and when the
    certificate in force now expires. A running server serves the old one until it is
    restarted."""
    cert_path = directory / f"{site}.pem"
    if not cert_path.exists():
        raise ValueError(f"{cert_path}: no certificate to renew (keys init makes it)")
    current = load_cert(cert_path)
    expires = current.not_valid_after_utc
    if not force and expires - dt.datetime.now(dt.UTC) > dt.timedelta(days=within_days):
        return False, expires
    key = _load_key(directory / f"{site}.key")
    spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if key.public_key().public_bytes(*spki) != current.public_key().public_bytes(*spki):
        raise ValueError(f"{directory / f'{site}.key'} is not the key of {cert_path}")
    names = current.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    sans = [*names.get_values_for_type(x509.DNSName),
            *(str(a) for a in names.get_values_for_type(x509.IPAddress))]
    cert = _site_cert(directory, site, sans, key.public_key())
    partial = cert_path.with_name(cert_path.name + ".new")
    partial.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    os.replace(partial, cert_path)
    return True, cert.not_valid_after_utc


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
    p_ren = sub.add_parser("renew", help="issue a site's certificate again before it "
                                         "expires (same key and names)")
    p_ren.add_argument("--dir", type=Path, required=True)
    p_ren.add_argument("--site", required=True)
    p_ren.add_argument("--within-days", type=int, default=RENEW_WITHIN_DAYS,
                       help="renew when it expires within this many days "
                            f"(default {RENEW_WITHIN_DAYS})")
    p_ren.add_argument("--force", action="store_true", help="renew whenever it expires")
    args = parser.parse_args(argv)
    try:
        if args.command == "renew":
            return _renew(args.dir, args.site, args.within_days, args.force)
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


def _renew(directory: Path, site: str, within_days: int, force: bool) -> int:
    if within_days < 1:
        print(f"error: --within-days must be at least 1, not {within_days}", file=sys.stderr)
        return 2
    renewed, expires = renew_site_cert(directory, site, within_days=within_days, force=force)
    left = (expires - dt.datetime.now(dt.UTC)).days
    path = directory / f"{site}.pem"
    if renewed:
        print(f"renewed {path}: valid until {expires.isoformat()}; restart the {site} "
              "server to serve it")
    else:
        print(f"{path}: not due, valid until {expires.isoformat()} ({left} days; renewed "
              f"within {within_days})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
