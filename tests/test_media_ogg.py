"""OggOpusParser: the Opus packets of a streamed Ogg file, exactly as muxed, however the bytes arrive."""

from __future__ import annotations

import io
import itertools
import struct
from collections.abc import Iterable

import av
import pytest

from media.ogg import OggOpusParser, ogg_crc
from media.packet import OpusPacket
from tests.support.fake_openai import CHUNK_SIZES, ogg_opus
from tests.support.speech import speak

TEXT = "The quick brown fox jumps over the lazy dog."
SERIAL = 0x5EED


@pytest.fixture(scope="module")
def speech() -> tuple[bytes, list[bytes]]:
    """The fake endpoint's Ogg Opus for TEXT, and its packets as PyAV's demuxer reads them."""
    return ogg_opus(TEXT)


def parse(data: bytes, sizes: Iterable[int] | None = None) -> tuple[OggOpusParser, list[OpusPacket]]:
    """Feed `data` in pieces of the cycled `sizes` (all at once if None), then end the stream."""
    parser = OggOpusParser()
    packets: list[OpusPacket] = []
    at = 0
    for size in itertools.cycle(sizes or [len(data)]):
        if at >= len(data):
            break
        packets += parser.feed(data[at : at + size])
        at += size
    assert parser.end() == []
    return parser, packets


def page(lacing: list[int], body: bytes, *, flags: int = 0, sequence: int = 0, serial: int = SERIAL) -> bytes:
    """One valid Ogg page (CRC included) holding `body` cut by `lacing`."""
    assert sum(lacing) == len(body) and len(lacing) <= 255
    header = struct.pack("<4sBBqIII", b"OggS", 0, flags, 0, serial, sequence, 0) + bytes([len(lacing), *lacing])
    crc = ogg_crc(header + body)
    return header[:22] + struct.pack("<I", crc) + header[26:] + body


def ogg_stream(groups: list[list[bytes]], *, max_segments: int = 255, serial: int = SERIAL) -> list[bytes]:
    """Pages for packet `groups` (each starting a new page), at most `max_segments` lacing values a
    page; a page that starts inside a packet carries the continued-packet flag."""
    laid_out: list[tuple[list[int], bytes, int]] = []
    for group in groups:
        segments: list[tuple[int, bytes]] = []
        for packet in group:
            values = [255] * (len(packet) // 255) + [len(packet) % 255]
            segments += [(v, packet[i * 255 : i * 255 + v]) for i, v in enumerate(values)]
        continued = False
        for at in range(0, len(segments), max_segments):
            chunk = segments[at : at + max_segments]
            laid_out.append(([v for v, _ in chunk], b"".join(b for _, b in chunk), 0x01 if continued else 0))
            continued = chunk[-1][0] == 255
    last = len(laid_out) - 1
    return [
        page(lacing, body, flags=flags | (0x02 if i == 0 else 0) | (0x04 if i == last else 0), sequence=i, serial=serial)
        for i, (lacing, body, flags) in enumerate(laid_out)
    ]


def opus_head(rate: int = 48000, channels: int = 1, pre_skip: int = 312) -> bytes:
    return struct.pack("<8sBBHIhB", b"OpusHead", 1, channels, pre_skip, rate, 0, 0)


def opus_tags(vendor: bytes = b"parley tests") -> bytes:
    return b"OpusTags" + struct.pack("<I", len(vendor)) + vendor + struct.pack("<I", 0)


def audio(toc: int, size: int) -> bytes:
    """A stand-in Opus packet: the parser reads only the TOC (and a code 3 frame count)."""
    return bytes([toc]) + bytes((toc + i) % 256 for i in range(size - 1))


def pyav_packets(data: bytes) -> list[bytes]:
    with av.open(io.BytesIO(data), "r", format="ogg") as container:
        return [bytes(p) for p in container.demux() if p.size]


@pytest.mark.parametrize("sizes", [[1], list(CHUNK_SIZES), [4096], None], ids=["byte-by-byte", "odd", "4k", "whole"])
def test_packets_are_pyav_demuxers_however_the_bytes_arrive(speech: tuple[bytes, list[bytes]], sizes: list[int] | None) -> None:
    data, reference = speech
    parser, packets = parse(data, sizes)

    assert [p.data for p in packets] == reference
    assert all(p.samples == 960 for p in packets)  # libopus' default 20 ms frames
    assert parser.tags_seen and not parser.truncated


def test_head_describes_the_stream_and_durations_add_up_to_the_audio(speech: tuple[bytes, list[bytes]]) -> None:
    parser, packets = parse(speech[0])

    assert parser.head is not None
    assert (parser.head.version, parser.head.channels, parser.head.input_sample_rate) == (1, 1, 24000)
    assert parser.head.output_gain == 0
    audio_samples_48k = len(speak(TEXT, rate=24000)) * 2
    assert 0 <= sum(p.samples for p in packets) - parser.head.pre_skip - audio_samples_48k < 960


def test_durations_come_from_each_toc_on_the_48khz_clock_whatever_the_input_rate() -> None:
    packets = [audio(0xFC, 80), audio(0xE0, 20), audio(0xFB, 300)[:1] + b"\x03" + bytes(298), audio(0x09, 40)]
    data = b"".join(ogg_stream([[opus_head(rate=16000)], [opus_tags()], packets]))

    parser, parsed = parse(data, [1])

    assert [p.data for p in parsed] == packets
    assert [p.samples for p in parsed] == [960, 120, 2880, 1920]  # 20 ms CELT, 2.5 ms CELT, 3 x 20 ms, 2 x 20 ms SILK
    assert parser.head is not None and parser.head.input_sample_rate == 16000


def test_a_packet_larger_than_a_page_and_packets_continued_across_pages() -> None:
    huge = audio(0xFC, 70_000)  # 275 lacing values: more than one page can hold
    small = [audio(0xFC, n) for n in (600, 100, 256, 3)]
    for max_segments in (255, 2):  # with 2, nearly every packet is continued on a later page
        pages = ogg_stream([[opus_head()], [opus_tags()], [small[0], huge, *small[1:]]], max_segments=max_segments)
        assert any(p[5] & 0x01 for p in pages)
        data = b"".join(pages)

        _, parsed = parse(data, [1])

        assert [p.data for p in parsed] == [small[0], huge, *small[1:]]
        assert pyav_packets(data) == [small[0], huge, *small[1:]]  # the helper writes pages FFmpeg reads


def test_lacing_in_exact_multiples_of_255_waits_for_the_terminating_zero() -> None:
    exact = [audio(0xFC, 255), b"", audio(0xFC, 510)]  # lacing 255,0 | 0 | 255,255,0
    pages = ogg_stream([[opus_head()], [opus_tags()], exact], max_segments=1)
    parser = OggOpusParser()
    for p in pages[:3]:  # head, tags, and a page whose only lacing value is 255
        assert parser.feed(p) == []

    first = parser.feed(pages[3])  # the next page's 0 ends the 255-byte packet

    assert [p.data for p in first] == [exact[0]]
    rest = [p for pg in pages[4:] for p in parser.feed(pg)]
    assert [p.data for p in rest] == [exact[2]]  # the zero-length packet is skipped


def test_opus_tags_spanning_pages_is_consumed_not_returned() -> None:
    tags = opus_tags(b"v" * 600)
    packets = [audio(0xFC, 50), audio(0xFC, 60)]
    pages = ogg_stream([[opus_head()], [tags], packets], max_segments=2)
    parser = OggOpusParser()
    parser.feed(pages[0])
    assert parser.feed(pages[1]) == []
    assert not parser.tags_seen  # OpusTags is not finished yet

    parsed = [p for pg in pages[2:] for p in parser.feed(pg)]

    assert parser.tags_seen
    assert [p.data for p in parsed] == packets


def test_a_stream_cut_mid_page_gives_only_the_complete_packets(speech: tuple[bytes, list[bytes]]) -> None:
    data, reference = speech
    parser, packets = parse(data[: len(data) // 2], [333])

    assert 0 < len(packets) < len(reference)
    assert [p.data for p in packets] == reference[: len(packets)]
    assert parser.truncated


def test_a_packet_cut_between_its_pages_is_dropped() -> None:
    packets = [audio(0xFC, 40), audio(0xFC, 700)]
    pages = ogg_stream([[opus_head()], [opus_tags()], packets], max_segments=2)  # 40,255 | 255,190
    parser, parsed = parse(b"".join(pages[:3]))

    assert [p.data for p in parsed] == packets[:1]
    assert parser.truncated


def test_only_the_first_logical_stream_is_used() -> None:
    ours = ogg_stream([[opus_head()], [opus_tags()], [audio(0xFC, 30), audio(0xFC, 31)]], max_segments=1)
    other = ogg_stream([[opus_head()], [opus_tags()], [audio(0xE0, 9)]], max_segments=1, serial=SERIAL + 1)
    mixed = [p for pair in itertools.zip_longest(ours, other) for p in pair if p]

    _, parsed = parse(b"".join(mixed))

    assert [p.data for p in parsed] == [audio(0xFC, 30), audio(0xFC, 31)]


def test_a_corrupted_page_fails_its_crc_check(speech: tuple[bytes, list[bytes]]) -> None:
    data = bytearray(speech[0])
    data[len(data) // 2] ^= 0x01

    with pytest.raises(ValueError, match="CRC"):
        parse(bytes(data))


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"ID3\x04" + bytes(64), "capture pattern"),
        (b"OggS\x01" + bytes(64), "version"),
        (b"".join(ogg_stream([[b"\x01vorbis" + bytes(30)]])), "OpusHead"),
    ],
    ids=["mp3", "ogg-version", "vorbis"],
)
def test_bytes_that_are_not_ogg_opus_raise_a_clear_error(data: bytes, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        OggOpusParser().feed(data)
