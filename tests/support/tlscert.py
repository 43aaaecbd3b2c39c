"""Self-signed certificate for the TLS test applications.

``make_self_signed(dir)`` -> (cert_path, key_path): uses the ``openssl``
command (package ``openssl``), or Python's ``cryptography`` when the command
is missing. The certificate is for CN/SAN 127.0.0.1 and localhost.
"""
from __future__ import annotations

import datetime
import shutil
import subprocess
from pathlib import Path


def make_self_signed(directory, name: str = "server", days: int = 30):
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    cert, key = d / (name + ".crt"), d / (name + ".key")
    if cert.exists() and key.exists():
        return cert, key
    if shutil.which("openssl"):
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256",
             "-days", str(days), "-subj", "/CN=127.0.0.1",
             "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
             "-keyout", str(key), "-out", str(cert)],
            check=True, capture_output=True)
        return cert, key
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import rsa
        from cryptography.x509.oid import NameOID
    except ImportError:
        raise RuntimeError("neither the openssl command nor python3-cryptography is installed "
                           "(apt-get install openssl)")
    import ipaddress
    pk = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    c = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
         .public_key(pk.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(now - datetime.timedelta(minutes=5))
         .not_valid_after(now + datetime.timedelta(days=days))
         .add_extension(x509.SubjectAlternativeName(
             [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
             critical=False)
         .sign(pk, hashes.SHA256()))
    key.write_bytes(pk.private_bytes(serialization.Encoding.PEM,
                                     serialization.PrivateFormat.TraditionalOpenSSL,
                                     serialization.NoEncryption()))
    cert.write_bytes(c.public_bytes(serialization.Encoding.PEM))
    return cert, key
