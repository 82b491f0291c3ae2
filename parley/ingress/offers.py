"""What a browser's WebRTC offer may ask of the node, checked before aiortc reads it.

aiortc makes a transceiver, a receiver with its jitter buffer and decoder for every m= section,
and aioice sends connectivity checks to every candidate the offer names. A page sends one audio and
one video section, bundled, with a handful of candidates; an offer of hundreds of sections would
cost the node that many receivers (aiortc 1.16 answered 40 sections, bundled or not, with two more
UDP sockets, so the node's `udp_ports` range was not the limit), and its candidates would have the
node send STUN to any address the client likes.

Invariants:
- An offer with more m= sections than `limits.max_media_sections` is refused whole, with a reason
  for the page (nothing is opened for it).
- Candidates the node must never send to are removed from the offer before aiortc sees it: an
  address that is unspecified, multicast, broadcast or reserved, and every candidate past
  `limits.max_candidates`. Loopback and private addresses stay: Parley is used on one machine and
  on LANs. (What the node may still reach, and why, is in docs/auth.md.)
"""

from __future__ import annotations

import ipaddress
import logging
import re
from dataclasses import dataclass

log = logging.getLogger("parley.offers")

_CANDIDATE = re.compile(r"^a=candidate:\S+ \d+ \S+ \d+ (\S+) \d+ typ \S+", re.I)


class OfferRefused(ValueError):
    """The offer asks more of the node than it gives anyone; the message is for the page."""


@dataclass(frozen=True)
class CheckedOffer:
    sdp: str
    """The offer as aiortc gets it (without the candidates it must not check)."""
    dropped_candidates: int


def check_offer(sdp: str, *, max_sections: int, max_candidates: int) -> CheckedOffer:
    """The offer with only what the node will act on; raises OfferRefused for one it will not take."""
    lines = sdp.replace("\r\n", "\n").split("\n")
    sections = sum(1 for line in lines if line.startswith("m="))
    if sections > max_sections:
        raise OfferRefused(f"the offer has {sections} media streams; Parley takes at most {max_sections}")
    kept: list[str] = []
    candidates = dropped = 0
    for line in lines:
        match = _CANDIDATE.match(line)
        if match is not None:
            if candidates >= max_candidates or not _reachable(match.group(1)):
                dropped += 1
                continue
            candidates += 1
        kept.append(line)
    if dropped:
        log.info("dropped %d ICE candidates of an offer (unusable addresses, or past %d)", dropped, max_candidates)
    return CheckedOffer(sdp="\r\n".join(kept), dropped_candidates=dropped)


def _reachable(address: str) -> bool:
    """Whether the node may send connectivity checks to a candidate's address: an mDNS name
    (Chromium hides local addresses behind `<uuid>.local`) or a unicast address."""
    if address.lower().endswith(".local"):
        return True
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False  # another host name: aioice would resolve it through DNS
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_unspecified or ip.is_multicast or ip.is_reserved:
        return False
    return not (isinstance(ip, ipaddress.IPv4Address) and ip == ipaddress.IPv4Address("255.255.255.255"))
