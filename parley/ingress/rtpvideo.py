"""What an RTP video payload says, read without decoding it: whether a packet begins a key frame
(VP8, RFC 7741; H.264, RFC 6184: single NAL units, STAP-A, FU-A) and a key frame's picture size
(the VP8 key frame header, RFC 6386 9.1; the H.264 sequence parameter set). Pure functions on
bytes and aiortc's `RtpPacket`; `parley.ingress.video`'s buffer uses them.
"""

from __future__ import annotations

from collections.abc import Iterable

from aiortc.rtp import RtpPacket

VP8 = "video/vp8"
H264 = "video/h264"

H264_STAP_A = 24
H264_FU_A = 28
H264_IDR = 5
H264_SPS = 7
H264_NON_IDR = 1


def vp8_size(data: bytes) -> tuple[int, int] | None:
    """A VP8 key frame's (width, height), from its depayloaded data (RFC 6386 9.1: the 3-byte
    frame tag, the start code 9d 01 2a, then 14-bit width and height, little-endian, each under
    2 bits of upscaling that do not change the decoded size); None if it is no key frame or
    too short, or has no start code."""
    if len(data) < 10 or data[0] & 1 or data[3:6] != b"\x9d\x01\x2a":
        return None
    return int.from_bytes(data[6:8], "little") & 0x3FFF, int.from_bytes(data[8:10], "little") & 0x3FFF


class _Bits:
    """An MSB-first reader of an H.264 RBSP (emulation prevention bytes removed); IndexError past its end."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def u(self, count: int = 1) -> int:
        value = 0
        for _ in range(count):
            byte = self.data[self.pos >> 3]
            value = value << 1 | (byte >> (7 - (self.pos & 7))) & 1
            self.pos += 1
        return value

    def ue(self) -> int:
        zeros = 0
        while not self.u():
            zeros += 1
            if zeros > 31:
                raise ValueError("exp-Golomb code too long")
        return (1 << zeros) - 1 + self.u(zeros)

    def se(self) -> int:
        code = self.ue()
        return (code + 1) // 2 if code & 1 else -(code // 2)


H264_CHROMA_PROFILES = frozenset({100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135})
"""Profiles whose SPS carries chroma_format_idc, bit depths and scaling matrices."""


def h264_sps_size(nal: bytes) -> tuple[int, int] | None:
    """The (width, height) a H.264 sequence parameter set (a whole NAL unit, header byte first)
    gives its pictures, after cropping (ITU-T H.264 7.3.2.1.1, 7.4.2.1.1); None if it cannot be
    read (truncated, or no SPS)."""
    if len(nal) < 4 or nal[0] & 0x1F != H264_SPS:
        return None
    bits = _Bits(nal[1:].replace(b"\x00\x00\x03", b"\x00\x00"))
    try:
        profile = bits.u(8)
        bits.u(16)  # constraint flags, level
        bits.ue()  # seq_parameter_set_id
        chroma, separate = 1, 0
        if profile in H264_CHROMA_PROFILES:
            chroma = bits.ue()
            if chroma == 3:
                separate = bits.u()
            bits.ue()  # bit_depth_luma_minus8
            bits.ue()  # bit_depth_chroma_minus8
            bits.u()  # qpprime_y_zero_transform_bypass_flag
            if bits.u():  # seq_scaling_matrix_present_flag
                for i in range(8 if chroma != 3 else 12):
                    if bits.u():
                        last = following = 8
                        for _ in range(16 if i < 6 else 64):
                            if following:
                                following = (last + bits.se() + 256) % 256
                            last = following or last
        bits.ue()  # log2_max_frame_num_minus4
        poc_type = bits.ue()
        if poc_type == 0:
            bits.ue()  # log2_max_pic_order_cnt_lsb_minus4
        elif poc_type == 1:
            bits.u()  # delta_pic_order_always_zero_flag
            bits.se()
            bits.se()
            for _ in range(bits.ue()):
                bits.se()
        bits.ue()  # max_num_ref_frames
        bits.u()  # gaps_in_frame_num_value_allowed_flag
        width_mbs = bits.ue() + 1
        height_units = bits.ue() + 1
        frame_mbs_only = bits.u()
        if not frame_mbs_only:
            bits.u()  # mb_adaptive_frame_field_flag
        bits.u()  # direct_8x8_inference_flag
        crop = (bits.ue(), bits.ue(), bits.ue(), bits.ue()) if bits.u() else (0, 0, 0, 0)
    except (IndexError, ValueError):
        return None
    if chroma == 0 or separate:
        crop_x, crop_y = 1, 2 - frame_mbs_only
    else:
        crop_x, crop_y = (1 if chroma == 3 else 2), (2 if chroma == 1 else 1) * (2 - frame_mbs_only)
    width = width_mbs * 16 - crop_x * (crop[0] + crop[1])
    height = (2 - frame_mbs_only) * height_units * 16 - crop_y * (crop[2] + crop[3])
    return (width, height) if width > 0 and height > 0 else (width_mbs * 16, (2 - frame_mbs_only) * height_units * 16)


SPS_MAX_BYTES = 4096
"""The most of an SPS split over FU-A fragments that is put together to be read (they are tens of bytes)."""


def h264_sps_units(payloads: Iterable[bytes]) -> list[bytes]:
    """The SPS NAL units in a frame's RTP payloads (RFC 6184: single NAL units, STAP-A, FU-A)."""
    found: list[bytes] = []
    fragment: bytearray | None = None
    for payload in payloads:
        if len(payload) < 2:
            continue
        kind = payload[0] & 0x1F
        if kind == H264_FU_A:
            if payload[1] & 0x80:
                fragment = bytearray([payload[0] & 0xE0 | payload[1] & 0x1F]) if payload[1] & 0x1F == H264_SPS else None
            if fragment is not None:
                fragment += payload[2 : 2 + SPS_MAX_BYTES - len(fragment)]
                if payload[1] & 0x40:
                    found.append(bytes(fragment))
                    fragment = None
            continue
        fragment = None
        if kind == H264_STAP_A:
            pos = 1
            while pos + 3 <= len(payload):
                size = int.from_bytes(payload[pos : pos + 2], "big")
                nal = payload[pos + 2 : pos + 2 + size]
                if nal and nal[0] & 0x1F == H264_SPS:
                    found.append(nal)
                pos += 2 + size
        elif kind == H264_SPS:
            found.append(payload)
    if fragment is not None:
        found.append(bytes(fragment))  # its end is missing: read what there is
    return found


def h264_nal_starts(payload: bytes) -> list[tuple[int, bool]]:
    """The NAL units an H.264 RTP payload (RFC 6184) begins: (type, whether a slice starts at
    macroblock 0), in order; empty for an FU-A fragment other than the first."""
    if len(payload) < 2:
        return []
    kind = payload[0] & 0x1F
    if kind == H264_FU_A:
        if not payload[1] & 0x80:
            return []
        return [(payload[1] & 0x1F, len(payload) > 2 and bool(payload[2] & 0x80))]
    if kind == H264_STAP_A:
        nals, pos = [], 1
        while pos + 3 <= len(payload):
            size = int.from_bytes(payload[pos : pos + 2], "big")
            nal = payload[pos + 2 : pos + 2 + size]
            if nal:
                nals.append((nal[0] & 0x1F, len(nal) > 1 and bool(nal[1] & 0x80)))
            pos += 2 + size
        return nals
    # a single NAL unit; first_mb_in_slice is ue(v), so 0 is a first bit of 1
    return [(kind, bool(payload[1] & 0x80))]


def vp8_key_start(packet: RtpPacket) -> bool:
    """Whether the packet begins a VP8 key frame: its payload descriptor (RFC 7741) has S=1 and
    partition 0, and the frame tag after it (aiortc's `vp8_depayload` leaves it first in `_data`)
    has bit 0 clear."""
    data: bytes = packet._data  # type: ignore[attr-defined]
    return bool(packet.payload) and packet.payload[0] & 0x1F == 0x10 and bool(data) and not data[0] & 1
