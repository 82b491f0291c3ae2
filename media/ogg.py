"""Ogg Opus, parsed as it streams: bytes in, Opus packets out, with no decoding and no transcoding.

Invariants:
- `feed` returns every audio packet whose last byte has arrived in a whole, CRC-checked page, in
  stream order and byte for byte as muxed; nothing is returned twice, nothing is returned early.
- OpusHead and OpusTags (the first two packets, however many pages they span) are consumed, never
  returned; zero-length packets and pages of any logical stream but the first are skipped.
- Each packet's `samples` is read from its TOC byte (RFC 6716 §3.1) on the 48 kHz RTP clock,
  whatever rate OpusHead says the input had.
- Bytes that are not Ogg (bad capture pattern, unknown version, bad CRC) raise ValueError; a
  stream that just stops (a cut connection) is not an error: `end()` drops the unfinished tail.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from media.opus import toc_duration_samples
from media.packet import OpusPacket

CAPTURE = b"OggS"
HEADER_SIZE = 27
"""Fixed part of a page header; the lacing table (one byte per segment) follows it."""

FLAG_CONTINUED = 0x01
FLAG_BOS = 0x02
FLAG_EOS = 0x04


def _crc_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte << 24
        for _ in range(8):
            crc = ((crc << 1) ^ 0x04C11DB7) if crc & 0x80000000 else crc << 1
        table.append(crc & 0xFFFFFFFF)
    return tuple(table)


_CRC_TABLE = _crc_table()


def ogg_crc(page: bytes | bytearray | memoryview) -> int:
    """Ogg's CRC-32 (polynomial 0x04c11db7, not reflected, initial value 0, no final xor) of
    `page`, whose CRC field (bytes 22..25) must already be zero."""
    crc = 0
    table = _CRC_TABLE
    for byte in page:
        crc = ((crc << 8) & 0xFFFFFFFF) ^ table[(crc >> 24) ^ byte]
    return crc


@dataclass(frozen=True)
class OpusHead:
    """The identification header of an Ogg Opus stream (RFC 7845 §5.1)."""

    version: int
    channels: int
    pre_skip: int
    """Samples (48 kHz) the decoder should discard at the start."""
    input_sample_rate: int
    """The rate the audio had before encoding: informational only, never the packets' clock."""
    output_gain: int
    """Q7.8 dB gain to apply on output."""

    @classmethod
    def parse(cls, packet: bytes) -> OpusHead:
        if len(packet) < 19 or not packet.startswith(b"OpusHead"):
            raise ValueError("not an Ogg Opus stream: the first packet is not an OpusHead")
        version, channels, pre_skip, rate, gain = struct.unpack_from("<BBHIh", packet, 8)
        if version >> 4:
            raise ValueError(f"unsupported OpusHead version {version}")
        return cls(version, channels, pre_skip, rate, gain)


class OggOpusParser:
    """An incremental Ogg Opus demuxer: `feed()` bytes as they arrive, `end()` when they stop."""

    def __init__(self) -> None:
        self.head: OpusHead | None = None
        """The stream's OpusHead, once its page has arrived."""
        self.tags_seen = False
        """True once the OpusTags packet has been consumed (audio packets follow it)."""
        self.truncated = False
        """Set by `end()` when it dropped an unfinished page or packet (the stream was cut)."""
        self._buffer = bytearray()
        self._serial: int | None = None
        self._sequence = 0
        self._partial = bytearray()
        self._continuing = False  # the last page of our stream ended inside a packet

    def feed(self, data: bytes) -> list[OpusPacket]:
        """Take the next bytes of the stream; return the audio packets they completed, in order.

        Raises ValueError when the bytes are not a valid Ogg stream.
        """
        self._buffer += data
        packets: list[OpusPacket] = []
        while (size := self._page_size()) is not None:
            page = bytes(self._buffer[:size])
            del self._buffer[:size]
            packets += self._page(page)
        return packets

    def end(self) -> list[OpusPacket]:
        """The stream is over: drop an unfinished page or packet (never returned as audio)."""
        self.truncated = bool(self._buffer or self._continuing)
        self._buffer.clear()
        self._partial.clear()
        self._continuing = False
        return []

    def _page_size(self) -> int | None:
        """Size of the whole page at the front of the buffer, or None until all of it is here."""
        buf = self._buffer
        if buf[:4] != CAPTURE[: len(buf)]:
            raise ValueError(f"not an Ogg stream: expected page capture pattern 'OggS', got {bytes(buf[:4])!r}")
        if len(buf) > 4 and buf[4] != 0:
            raise ValueError(f"unsupported Ogg version {buf[4]}")
        if len(buf) < HEADER_SIZE or len(buf) < HEADER_SIZE + buf[26]:
            return None
        size = HEADER_SIZE + buf[26] + sum(buf[HEADER_SIZE : HEADER_SIZE + buf[26]])
        return size if len(buf) >= size else None

    def _page(self, page: bytes) -> list[OpusPacket]:
        flags, serial, sequence, crc, count = struct.unpack_from("<B8xIIIB", page, 5)
        if ogg_crc(page[:22] + b"\0\0\0\0" + page[26:]) != crc:
            raise ValueError(f"Ogg page {sequence} of stream {serial:#x} failed its CRC check")
        if self._serial is None:
            self._serial = serial
        elif serial != self._serial:
            return []
        if sequence != self._sequence or not flags & FLAG_CONTINUED:
            # A lost page, or a packet its next page never continued: the partial one is garbage.
            self._partial.clear()
            self._continuing = False
        self._sequence = sequence + 1

        lacing = page[HEADER_SIZE : HEADER_SIZE + count]
        offset = HEADER_SIZE + count
        skip = bool(flags & FLAG_CONTINUED) and not self._continuing  # the start of it is lost
        packets: list[OpusPacket] = []
        for value in lacing:
            if not skip:
                self._partial += page[offset : offset + value]
            offset += value
            if value < 255:  # a lacing value below 255 ends the packet
                if not skip:
                    packets += self._packet(bytes(self._partial))
                self._partial.clear()
                skip = False
        self._continuing = bool(lacing) and lacing[-1] == 255
        return packets

    def _packet(self, packet: bytes) -> list[OpusPacket]:
        if self.head is None:
            self.head = OpusHead.parse(packet)
            return []
        if not self.tags_seen:
            if not packet.startswith(b"OpusTags"):
                raise ValueError("not an Ogg Opus stream: OpusTags does not follow OpusHead")
            self.tags_seen = True
            return []
        if not packet:
            return []
        return [OpusPacket(data=packet, samples=toc_duration_samples(packet))]
