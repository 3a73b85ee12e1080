"""TLS: our server takes an ssl.SSLContext (ALPN h2); the handler sees the client certificate's name."""

from __future__ import annotations

import shutil
import ssl
import subprocess
from pathlib import Path

import grpc
import pytest

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")


def _issue(directory: Path, name: str, ca: str | None) -> None:
    key, cert = directory / f"{name}.key", directory / f"{name}.pem"
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", str(key)]
    if ca is None:
        subprocess.run(["openssl", "req", "-x509", *ec, "-out", str(cert), "-days", "1", "-subj", f"/CN={name}"],
                       check=True, capture_output=True)
        return
    csr = directory / f"{name}.csr"
    subprocess.run(["openssl", "req", *ec, "-out", str(csr), "-subj", f"/CN={name}"], check=True, capture_output=True)
    extensions = directory / f"{name}.ext"
    extensions.write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    subprocess.run(["openssl", "x509", "-req", "-in", str(csr), "-CA", str(directory / f"{ca}.pem"),
                    "-CAkey", str(directory / f"{ca}.key"), "-CAcreateserial", "-out", str(cert), "-days", "1",
                    "-extfile", str(extensions)], check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("pki")
    _issue(directory, "ca", None)
    _issue(directory, "localhost", "ca")
    _issue(directory, "alice", "ca")
    return directory


def test_mutual_tls_with_alpn_h2_and_the_peer_name_in_the_auth_context(echo_factory, pki: Path) -> None:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki / "ca.pem"))
    context.load_cert_chain(pki / "localhost.pem", pki / "localhost.key")
    context.verify_mode = ssl.CERT_REQUIRED
    context.set_alpn_protocols(["h2"])
    echo = echo_factory(ssl_context=context)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=(pki / "ca.pem").read_bytes(), private_key=(pki / "alice.key").read_bytes(),
        certificate_chain=(pki / "alice.pem").read_bytes())
    with grpc.secure_channel(f"localhost:{echo.port}", credentials) as channel:
        assert channel.unary_unary("/test.Echo/Echo")(b"secret", timeout=10) == b"secret"
        answer = channel.unary_unary("/test.Echo/Metadata")(b"", timeout=10)
    assert b"'x509_common_name': [b'alice']" in answer
    assert b"'transport_security_type': [b'ssl']" in answer
