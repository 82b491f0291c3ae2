"""A self-signed certificate for serving the page over HTTPS on a non-loopback host, and the
node's files that several processes make at once (`locked`, `publish`).

Invariants: made once per host name and reused, so a browser's "accept this certificate" stays
valid; it names every name and address the machine answers to (its host names, every interface
address, loopback), so it matches what users type; its key file is created with mode 0600, never
readable by others even for a moment. Ingress processes of a node starting together make it once
(under a lock) and all serve the same pair; each file appears whole (written aside, then renamed),
and a key that is not the certificate's (a crash between the two) or an expired certificate is
made again.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import ipaddress
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def subject_names(host: str) -> list[x509.GeneralName]:
    """Every name and address this machine answers to, and `host` itself."""
    import socket

    import ifaddr

    dns = {"localhost", socket.gethostname(), socket.getfqdn()}
    ips = {ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")}
    for adapter in ifaddr.get_adapters():
        for address in adapter.ips:
            value = address.ip if isinstance(address.ip, str) else address.ip[0]
            with contextlib.suppress(ValueError):
                ips.add(ipaddress.ip_address(value.split("%")[0]))
    try:
        if not ipaddress.ip_address(host).is_unspecified:
            ips.add(ipaddress.ip_address(host))
    except ValueError:
        dns.add(host)
    names: list[x509.GeneralName] = [x509.DNSName(d) for d in sorted(n for n in dns if n)]
    return names + [x509.IPAddress(ip) for ip in sorted(ips, key=lambda ip: (ip.version, int(ip)))]


@contextlib.contextmanager
def locked(directory: Path) -> Iterator[None]:
    """Hold the exclusive lock of `directory`: one process of the node at a time. The lock is the
    directory's own (flock), so no lock file is left in it; where the file system refuses that (NFS),
    a file `.lock` in it."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
    except OSError:
        os.close(fd)
        fd = os.open(directory / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        yield
    finally:
        os.close(fd)  # and with it the lock


def publish(path: Path, data: bytes, mode: int) -> None:
    """Put `data` at `path` whole: written to a file beside it (created with mode 0600, then given
    `mode`), flushed to disk, then renamed over `path`, so a reader sees the old file or the new one,
    never part of one."""
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    with contextlib.suppress(OSError):  # the rename itself, on disk
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)


def _usable(cert_path: Path, key_path: Path) -> bool:
    """Whether the pair is there, the key is the certificate's, and the certificate is still valid."""
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError):
        return False
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    if cert.public_key().public_bytes(*spki) != key.public_key().public_bytes(*spki):
        return False
    return cert.not_valid_after_utc > datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=1)


def self_signed_pair(directory: Path, host: str) -> tuple[str, str]:
    """Return (cert, key) paths for `host`, creating them on first use (or when they do not match)."""
    directory.mkdir(parents=True, exist_ok=True)
    safe = "".join(c if c.isalnum() or c in ".-" else "_" for c in host) or "host"
    # "-2": certificates made before they named every address are not reused
    cert_path, key_path = directory / f"{safe}-2.crt", directory / f"{safe}-2.key"
    if _usable(cert_path, key_path):
        return str(cert_path), str(key_path)
    with locked(directory):
        if not _usable(cert_path, key_path):  # another process of the node may have made it while this one waited
            key, cert = _make_pair(host)
            # the key first: a reader between the two renames sees a mismatch, and waits here for the lock
            publish(key_path, key, 0o600)
            publish(cert_path, cert, 0o644)
    return str(cert_path), str(key_path)


def _make_pair(host: str) -> tuple[bytes, bytes]:
    """A new key and its self-signed certificate for `host` (PEM)."""
    key = ec.generate_private_key(ec.SECP256R1())
    names = subject_names(host)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"Parley {host}")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=825))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .sign(key, hashes.SHA256())
    )
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return private, cert.public_bytes(serialization.Encoding.PEM)
