"""Packet loss for tests: a share of the UDP datagrams in the test's own network namespace dropped by nftables.

Invariants:
- Only UDP is dropped (WebRTC's media, DTLS and STUN); TCP (socket.io, HTTP, Ray) is never touched.
- Datagrams are dropped on the *input* hook: each loopback datagram passes it once, on arrival, so
  both directions of a call lose the same share independently, and the sender's sendto() always
  succeeds as it would on a real lossy link (a drop on the output hook fails sendto() with EPERM,
  which a browser takes as a broken socket, not as loss).
- `udp_loss` acts on the namespace this process is in, and only when that namespace's one interface
  is loopback (`loopback_only()`): it raises anywhere else, so it can never drop a packet of a real
  network. Its table exists only inside the `with` block: it is deleted on the way out, the test
  failing or not, and one already there (a nested `udp_loss`) is an error.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.support.network import loopback_only

NFT = "/usr/sbin/nft"
TABLE = "parley_loss"
CHAIN = "inp"
RESOLUTION = 10_000
"""Loss is drawn per datagram as a random number below RESOLUTION: percentages to 0.01 %."""

CONCEALMENT_JS = """async () => {
    const pc = window.parley && window.parley.pc;
    const out = { received: 0, concealed: 0, silentConcealed: 0, fec: 0, fecDiscarded: 0, lost: 0, packets: 0 };
    Object.assign(out, { jbDelay: 0, jbEmitted: 0, share: null });
    if (!pc) return out;
    (await pc.getStats()).forEach((r) => {
        if (r.type !== 'inbound-rtp' || r.kind !== 'audio') return;
        out.received += r.totalSamplesReceived || 0;
        out.concealed += r.concealedSamples || 0;
        out.silentConcealed += r.silentConcealedSamples || 0;
        out.fec += r.fecPacketsReceived || 0;
        out.fecDiscarded += r.fecPacketsDiscarded || 0;
        out.jbDelay += r.jitterBufferDelay || 0;
        out.jbEmitted += r.jitterBufferEmittedCount || 0;
        out.lost += Math.max(0, r.packetsLost || 0);
        out.packets += r.packetsReceived || 0;
    });
    if (out.received > 0) out.share = (out.concealed - out.silentConcealed) / out.received;
    return out;
}"""
"""Parley's voice as the page received it (getStats inbound-rtp audio, summed): samples received,
concealed and concealed as silence, FEC packets (libwebrtc's NetEq, in both browsers, counts every
packet that came carrying FEC or RED, used or not; less `fecDiscarded`, those whose own packet had
come: the ones used), packets lost and received, the jitter buffer's delay summed over the samples it
emitted (`jbDelay` seconds over `jbEmitted`), and `share`, the part
of the voice the browser made up: (concealedSamples - silentConcealedSamples) / totalSamplesReceived
(null before any sample). Cumulative since the connection started: difference two readings to
measure a stretch. A function's source, for Playwright's `page.evaluate` and the Firefox driver's."""


def nft_missing() -> str | None:
    """Why `udp_loss` cannot run here, or None when it can (for `pytest.mark.skipif`)."""
    if not Path(_binary()).exists():
        return "nft is not installed (scripts/install.sh --dev installs nftables)"
    if not loopback_only():
        return "packet loss is injected only in a loopback-only network namespace (run scripts/test.sh as root)"
    return None


def _binary() -> str:
    return NFT if Path(NFT).exists() else shutil.which("nft") or NFT


def _nft(script: str) -> None:
    """Run one nft script as one transaction (all of it or nothing); raise with nft's words if it fails."""
    done = subprocess.run([_binary(), "-f", "-"], input=script, capture_output=True, text=True, timeout=10, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"nft failed ({done.returncode}): {done.stderr.strip()}\nscript:\n{script}")


def _rules(percent: float) -> str:
    """The chain's rules for `percent` % loss (none for 0)."""
    if not 0 <= percent <= 100:
        raise ValueError(f"loss must be 0-100 %, not {percent}")
    below = round(percent * RESOLUTION / 100)
    if below == 0:
        return ""
    return f"add rule inet {TABLE} {CHAIN} meta l4proto udp numgen random mod {RESOLUTION} < {below} drop\n"


class UdpLoss:
    """The loss in force; `set` changes it at once."""

    def __init__(self, percent: float) -> None:
        self.percent = percent

    def set(self, percent: float) -> None:
        """Drop `percent` % of UDP datagrams from now on (0: none); the chain is swapped in one transaction."""
        _nft(f"flush chain inet {TABLE} {CHAIN}\n{_rules(percent)}")
        self.percent = percent


@contextmanager
def udp_loss(percent: float) -> Iterator[UdpLoss]:
    """Drop `percent` % of the UDP datagrams arriving in this network namespace while inside the block.

    Raises (and changes nothing) outside a loopback-only namespace, or when nft is missing."""
    if not loopback_only():
        raise RuntimeError("udp_loss refuses to run outside a loopback-only network namespace")
    rules = _rules(percent)
    # `create` (not `add`) fails if the table is there: a nested udp_loss is a bug, not a reset.
    chain = f"add chain inet {TABLE} {CHAIN} {{ type filter hook input priority 0; policy accept; }}"
    _nft(f"create table inet {TABLE}\n{chain}\n{rules}")
    try:
        yield UdpLoss(percent)
    finally:
        _nft(f"delete table inet {TABLE}\n")


def tables() -> str:
    """nft's listing of this namespace's tables (for tests that check nothing was left behind)."""
    return subprocess.run([_binary(), "list", "tables"], capture_output=True, text=True, timeout=10, check=True).stdout
