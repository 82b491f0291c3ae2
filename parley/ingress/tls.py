"""A self-signed certificate for serving the page over HTTPS on a non-loopback host.

Invariants: made once per host name and reused, so a browser's "accept this certificate" stays
valid; it names every name and address the machine answers to (its host names, every interface
address, loopback), so it matches what users type; its key file is created with mode 0600, never
readable by others even for a moment.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import os
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


def self_signed_pair(directory: Path, host: str) -> tuple[str, str]:
    """Return (cert, key) paths for `host`, creating them on first use."""
    directory.mkdir(parents=True, exist_ok=True)
    safe = "".join(c if c.isalnum() or c in ".-" else "_" for c in host) or "host"
    # "-2": certificates made before they named every address are not reused
    cert_path, key_path = directory / f"{safe}-2.crt", directory / f"{safe}-2.key"
    if cert_path.exists() and key_path.exists():
        return str(cert_path), str(key_path)
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
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    key_path.chmod(0o600)  # an existing file keeps its old mode through O_TRUNC
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return str(cert_path), str(key_path)
