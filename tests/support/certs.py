"""A throw-away CA and certificate for TLS tests, made with the openssl command."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

__all__ = ["OPENSSL_MISSING", "make_tls"]

OPENSSL_MISSING = "the openssl command is not installed (Debian: apt-get install openssl)"


def make_tls(directory: Path, name: str = "ipspool-test") -> tuple[str, str, str]:
    """(ca file, certificate file, key file): one key pair signed by a fresh CA, valid for 127.0.0.1."""
    if shutil.which("openssl") is None:
        raise FileNotFoundError(OPENSSL_MISSING)
    directory.mkdir(parents=True, exist_ok=True)
    ca, ca_key = directory / "ca.pem", directory / "ca-key.pem"
    cert, key, csr = directory / "cert.pem", directory / "key.pem", directory / "cert.csr"
    ext = directory / "san.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)

    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", str(ca_key), "-out", str(ca), "-days", "1", "-subj", f"/CN={name} CA")
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={name}")
    openssl("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial",
            "-out", str(cert), "-days", "1", "-extfile", str(ext))
    key.chmod(0o600)
    return str(ca), str(cert), str(key)
