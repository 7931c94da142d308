"""A site certificate issued again before it expires (``keys renew``): not before it is due
(unless forced), then with the same key and names, issued by the same CA, valid for the
full term from now, and loadable with its key as a server's TLS context; a key that is not
the certificate's, or no certificate at all, refused naming the file."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from edge_server.__main__ import main as edge_main
from shared import pki


def spki(cert: x509.Certificate) -> bytes:
    return cert.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)


def sans(cert: x509.Certificate) -> list[str]:
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return [*names.get_values_for_type(x509.DNSName),
            *(str(a) for a in names.get_values_for_type(x509.IPAddress))]


def test_not_renewed_before_it_is_due_then_renewed_with_the_same_key_and_names(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pki.init(tmp_path, ["edge"], ["edge.example.jp", "192.0.2.10"])
    path = tmp_path / "edge.pem"
    before = path.read_bytes()
    old = pki.load_cert(path)
    assert edge_main(["keys", "renew", "--dir", str(tmp_path)]) == 0
    assert "not due" in capsys.readouterr().out and path.read_bytes() == before

    renewed, expires = pki.renew_site_cert(tmp_path, "edge", within_days=900)
    new = pki.load_cert(path)
    assert renewed and expires == new.not_valid_after_utc >= old.not_valid_after_utc
    assert new.serial_number != old.serial_number
    assert spki(new) == spki(old)
    assert new.subject == old.subject and sans(new) == sans(old) == [
        "edge", "edge.example.jp", "192.0.2.10"]
    new.verify_directly_issued_by(pki.load_cert(tmp_path / "ca.pem"))
    assert expires - dt.datetime.now(dt.UTC) > dt.timedelta(days=824)
    pki.server_context(path, tmp_path / "edge.key", tmp_path / "ca.pem")   # cert and key agree
    assert not list(tmp_path.glob("*.new"))

    assert edge_main(["keys", "renew", "--dir", str(tmp_path), "--force"]) == 0
    said = capsys.readouterr().out
    assert said.startswith(f"renewed {path}: valid until ") and "restart the edge server" \
        in said, said


def test_a_key_not_the_certificates_or_no_certificate_is_refused_naming_the_file(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pki.init(tmp_path, ["edge", "callback"])
    (tmp_path / "edge.key").write_bytes((tmp_path / "callback.key").read_bytes())
    with pytest.raises(ValueError, match="edge.key is not the key of"):
        pki.renew_site_cert(tmp_path, "edge", force=True)
    assert edge_main(["keys", "renew", "--dir", str(tmp_path), "--site", "edge2"]) == 2
    assert "edge2.pem: no certificate to renew" in capsys.readouterr().err
    assert edge_main(["keys", "renew", "--dir", str(tmp_path), "--within-days", "0"]) == 2
    assert "--within-days must be at least 1, not 0" in capsys.readouterr().err
