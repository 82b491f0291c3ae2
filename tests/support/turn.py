"""Debian's coturn for the tests: a TURN server on loopback that checks the TURN REST shared secret.

Invariant: `running_coturn` yields a `turnserver` (the coturn package, `scripts/install.sh --dev`)
that listens on 127.0.0.1 only, answers STUN on its UDP port before it is yielded, relays only from
127.0.0.1 inside a port range of its own, reads no config file and writes nothing outside the
folder it is given (log, pid file, user database). It accepts the credentials Parley makes
(`parley.ingress.ice.relay_credentials`: use-auth-secret with `secret`) and nothing else. It lets
allocations reach loopback peers (`--allow-loopback-peers`), which a real deployment must never do
(docs/cluster.md); here loopback is the only interface. The process this module started is killed
on the way out, whatever happened in between.
"""

from __future__ import annotations

import os
import random
import re
import shutil
import socket
import struct
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.support.network import free_port

TURNSERVER = shutil.which("turnserver")
"""Debian's coturn (None when it is not installed)."""

REALM = "parley.test"


@dataclass
class Coturn:
    """A running turnserver: where it listens, where it relays from, and what its log says."""

    port: int
    relay_ports: range
    secret: str
    folder: Path
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        """The TURN URL for Parley's `webrtc.ice_servers` (UDP to the server, UDP relays)."""
        return f"turn:127.0.0.1:{self.port}?transport=udp"

    @property
    def log_file(self) -> Path:
        return self.folder / "turnserver.log"

    def log(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""

    def sessions(self, username: str) -> set[str]:
        """The ids of the TURN sessions (allocations) coturn made for `username`."""
        pattern = rf"session (\d+): new, realm=<{re.escape(REALM)}>, username=<{re.escape(username)}>"
        return set(re.findall(pattern, self.log()))

    def succeeded(self, username: str, method: str) -> int:
        """How many requests of `method` (ALLOCATE, CREATE_PERMISSION, CHANNEL_BIND...) from
        `username` coturn accepted: each one was checked against the shared secret."""
        pattern = rf"user <{re.escape(username)}>(?: remote <[^>]*>)?: incoming packet {method} processed, success"
        return len(re.findall(pattern, self.log()))

    def peers(self, username: str) -> set[str]:
        """The peer addresses `username`'s allocations were given permission (or a channel) to send to.
        coturn's permissions are per IP address, so these carry no port."""
        sessions = self.sessions(username)
        found = re.findall(r"session (\d+): peer ([^\s:]+)(?::\d+)? lifetime updated", self.log())
        return {address for session, address in found if session in sessions}

    def relayed(self, username: str) -> tuple[int, int]:
        """Bytes `username`'s allocations relayed, as far as the log says: (received from their peers,
        sent to them), the sums of the "peer usage" lines coturn writes for them. It writes one when
        an allocation ends (the client releases it, or it times out)."""
        sessions = self.sessions(username)
        found = re.findall(
            r"session (\d+): peer usage: realm=<[^>]*>, username=<[^>]*>, rp=\d+, rb=(\d+), sp=\d+, sb=(\d+)", self.log()
        )
        counts = [(int(rb), int(sb)) for session, rb, sb in found if session in sessions]
        return sum(rb for rb, _ in counts), sum(sb for _, sb in counts)


def stun_answers(port: int, timeout_s: float = 0.2) -> bool:
    """True if a STUN Binding request to 127.0.0.1:`port` over UDP gets a Binding success response."""
    transaction = os.urandom(12)
    request = struct.pack("!HHI", 0x0001, 0, 0x2112A442) + transaction
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout_s)
        s.sendto(request, ("127.0.0.1", port))
        try:
            reply = s.recv(2048)
        except OSError:  # a timeout, or ICMP port unreachable while it is still starting
            return False
    return len(reply) >= 20 and reply[:2] == b"\x01\x01" and reply[8:20] == transaction


@contextmanager
def running_coturn(folder: Path, secret: str, start_timeout_s: float = 15.0) -> Iterator[Coturn]:
    """coturn on a free loopback port with `secret` as its static-auth-secret, relaying from 100
    ports of its own (below the kernel's ephemeral range, where Chromium and aiortc bind); killed on
    the way out."""
    assert TURNSERVER, "turnserver is not installed (scripts/install.sh --dev installs coturn)"
    port = free_port()
    low = random.randrange(20000, 30000, 100)
    relay_ports = range(low, low + 100)
    args = [
        TURNSERVER,
        "-n",  # no /etc/turnserver.conf: every setting is on this line
        "--listening-ip=127.0.0.1",
        f"--listening-port={port}",
        "--relay-ip=127.0.0.1",
        f"--min-port={relay_ports.start}",
        f"--max-port={relay_ports.stop - 1}",
        "--use-auth-secret",
        f"--static-auth-secret={secret}",
        f"--realm={REALM}",
        "--fingerprint",
        "--allow-loopback-peers",  # tests only: the Parley "node" is 127.0.0.1
        "--no-tls",
        "--no-dtls",
        "--no-cli",
        "--no-stdout-log",
        f"--log-file={folder / 'turnserver.log'}",
        "--simple-log",  # the log file keeps its name (no date appended)
        f"--pidfile={folder / 'turnserver.pid'}",
        f"--db={folder / 'turndb'}",  # not /var/lib/turn
        "--verbose",  # each allocation, permission and channel in the log
    ]
    with (folder / "turnserver.out").open("wb") as out:
        process = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    turn = Coturn(port=port, relay_ports=relay_ports, secret=secret, folder=folder, process=process)
    try:
        deadline = time.monotonic() + start_timeout_s
        while not stun_answers(port):
            assert process.poll() is None, f"turnserver exited at start ({process.returncode}):\n{turn.log()[-3000:]}"
            assert time.monotonic() < deadline, f"turnserver did not answer STUN within {start_timeout_s:g} s"
            time.sleep(0.05)
        yield turn
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(timeout=10)
