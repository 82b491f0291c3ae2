"""Redundant audio over RTP (RED, RFC 2198): each packet carries the packets before it as well.

A RED payload is a list of blocks. Every block but the last has a 4-byte header (F bit set, its
payload type, how far its timestamp lies before the packet's, its length); the last block, the
primary (the newest audio), has a 1-byte header (F clear, payload type) and runs to the end. The
redundant blocks' data come first, oldest first, then the primary's. A receiver that lost packet n
finds it again in packet n+1 (or n+2 with two blocks of redundancy).

Invariants: `pack` never writes a block the header cannot describe (a timestamp offset over
14 bits, a length over 10 bits): such an older packet is left out, never truncated; `unpack`
reads exactly what `pack` writes (and what browsers send) and raises ValueError for a payload
whose headers do not add up, never returning a block that runs past the payload's end.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

MAX_OFFSET = (1 << 14) - 1
"""The largest timestamp offset a block header holds (341 ms at 48 kHz)."""

MAX_LENGTH = (1 << 10) - 1
"""The largest block a block header holds, in bytes."""


@dataclass(frozen=True)
class Block:
    """One block of a RED payload: `offset` timestamp ticks before the packet's own (0: the primary)."""

    payload_type: int
    offset: int
    data: bytes


def pack(payload_type: int, primary: bytes, earlier: Sequence[tuple[int, bytes]]) -> bytes:
    """A RED payload: `primary` (payload type `payload_type`) after the `earlier` packets, given
    oldest first as (timestamp offset before the primary, data). Earlier packets the header cannot
    describe, or empty ones, are left out."""
    if not 0 <= payload_type < 128:
        raise ValueError(f"an RTP payload type is 0-127, got {payload_type}")
    kept = [(offset, data) for offset, data in earlier if 0 < offset <= MAX_OFFSET and 0 < len(data) <= MAX_LENGTH]
    header = bytearray()
    for offset, data in kept:
        word = (1 << 31) | (payload_type << 24) | (offset << 10) | len(data)
        header += word.to_bytes(4, "big")
    header.append(payload_type)
    return bytes(header) + b"".join(data for _, data in kept) + primary


def unpack(payload: bytes) -> list[Block]:
    """The blocks of a RED payload, oldest first, the primary (offset 0) last."""
    headers: list[tuple[int, int, int]] = []
    at = 0
    while True:
        if at >= len(payload):
            raise ValueError("RED payload ends inside its block headers")
        if payload[at] & 0x80:
            if at + 4 > len(payload):
                raise ValueError("RED payload ends inside a block header")
            word = int.from_bytes(payload[at : at + 4], "big")
            headers.append(((word >> 24) & 0x7F, (word >> 10) & MAX_OFFSET, word & MAX_LENGTH))
            at += 4
        else:
            primary_type = payload[at] & 0x7F
            at += 1
            break
    blocks = []
    for payload_type, offset, length in headers:
        if at + length > len(payload):
            raise ValueError("a RED block runs past the end of its payload")
        blocks.append(Block(payload_type, offset, payload[at : at + length]))
        at += length
    blocks.append(Block(primary_type, 0, payload[at:]))
    return blocks
