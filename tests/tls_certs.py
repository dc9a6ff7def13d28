"""Certificates for the TLS tests, generated with ``cryptography`` (no files shipped).

``make_certs(folder)`` writes self-signed certificates with their keys, as
``openssl req -x509 -newkey ... -nodes`` makes them (basicConstraints CA:TRUE, no key
usage restriction): ``server``, ``client`` (trusted by the server), ``untrusted`` (a
valid certificate the server does not trust) and ``expired`` (trusted by the server,
but its validity ended yesterday). The server's PEER file ``trusted_clients.pem`` holds
``client`` and ``expired``.
"""

from __future__ import annotations

import datetime
import os
import subprocess
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from labpipe.protocol.tls import TLSFiles


@dataclass(frozen=True)
class Identity:
    cert: str
    key: str


@dataclass(frozen=True)
class Certs:
    server: Identity
    client: Identity
    untrusted: Identity
    expired: Identity
    trusted_clients: str

    def server_files(self) -> TLSFiles:
        """The master's ``--ssl CERT KEY PEER``."""
        return TLSFiles(self.server.cert, self.server.key, self.trusted_clients)

    def client_files(self, who: str = "client") -> TLSFiles:
        """A client's ``--ssl CERT KEY PEER`` (who: client, untrusted or expired)."""
        identity = getattr(self, who)
        return TLSFiles(identity.cert, identity.key, self.server.cert)


def _identity(folder: str, name: str, not_before: datetime.datetime,
              not_after: datetime.datetime, group: str | None = None) -> Identity:
    key = ec.generate_private_key(ec.SECP256R1())
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, f"labpipe test {name}")]
    if group is not None:  # the OU: the group labpipe's permissions take (docs/access.md)
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, group))
    subject = x509.Name(attributes)
    cert = (x509.CertificateBuilder()
            .subject_name(subject).issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before).not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .sign(key, hashes.SHA256()))
    cert_path = os.path.join(folder, f"{name}.pem")
    key_path = os.path.join(folder, f"{name}.key")
    with open(cert_path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(key_path, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM,
                                  serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    return Identity(cert_path, key_path)


def make_certs(folder: str) -> Certs:
    """Write the test certificates into folder; see the module docstring."""
    os.makedirs(folder, exist_ok=True)
    now = datetime.datetime.now(datetime.timezone.utc)
    valid = (now - datetime.timedelta(days=1), now + datetime.timedelta(days=30))
    server = _identity(folder, "server", *valid)
    client = _identity(folder, "client", *valid)
    untrusted = _identity(folder, "untrusted", *valid)
    expired = _identity(folder, "expired", now - datetime.timedelta(days=30),
                        now - datetime.timedelta(days=1))
    trusted = os.path.join(folder, "trusted_clients.pem")
    with open(trusted, "wb") as out:
        for identity in (client, expired):
            with open(identity.cert, "rb") as f:
                out.write(f.read())
    return Certs(server, client, untrusted, expired, trusted)


def group_identity(folder: str, name: str, group: str) -> Identity:
    """A valid self-signed certificate whose subject's OU is group."""
    now = datetime.datetime.now(datetime.timezone.utc)
    return _identity(folder, name, now - datetime.timedelta(days=1),
                     now + datetime.timedelta(days=30), group)


def openssl_identity(folder: str, name: str) -> Identity:
    """A self-signed certificate and key made by the ``openssl`` command exactly as
    ARTIQ's manual (and labpipe's README) says: ``openssl req -x509 -newkey rsa -keyout
    NAME.key -nodes -out NAME.pem -sha256 -subj /``."""
    cert, key = os.path.join(folder, f"{name}.pem"), os.path.join(folder, f"{name}.key")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa", "-keyout", key, "-nodes",
                    "-out", cert, "-sha256", "-subj", "/"],
                   check=True, capture_output=True, timeout=120)
    return Identity(cert, key)
