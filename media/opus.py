"""Opus packets: the 20 ms silence packet and encoding PCM into 48 kHz RTP-clocked packets.

Invariant: every packet this module hands out carries its true duration on the 48 kHz RTP clock,
read from the packet's own TOC byte (RFC 6716 §3.1), so pacing never trusts a guess about the
encoder's frame size or the input's sample rate.
"""

from __future__ import annotations

from collections import deque

import av
import numpy as np

from media.packet import OpusPacket

SILENCE_PACKET = bytes.fromhex("f8ff fe")
"""20 ms of silence in any Opus stream (TOC: CELT FB 20 ms, mono, one frame)."""

RTP_CLOCK_HZ = 48000
"""Opus over RTP always uses a 48 kHz clock (RFC 7587), whatever the encoded sample rate."""

FRAME_MS = (2.5, 5.0, 10.0, 20.0, 40.0, 60.0)
"""Frame durations an Opus encoder can be asked for (RFC 6716 §2.1.4)."""

_NATIVE_RATES = (48000, 24000, 16000, 12000, 8000)
"""Input rates libopus encodes directly; any other rate is resampled to 48 kHz first."""

# Frame size in 48 kHz samples for each TOC configuration number (RFC 6716 §3.1, table 2):
# 0-11 SILK (10/20/40/60 ms per bandwidth), 12-15 hybrid (10/20 ms), 16-31 CELT (2.5/5/10/20 ms).
_CONFIG_SAMPLES = (480, 960, 1920, 2880) * 3 + (480, 960) * 2 + (120, 240, 480, 960) * 4
_MAX_PACKET_SAMPLES = 5760  # 120 ms: RFC 6716 §3.2.5 (R5)


def toc_duration_samples(packet: bytes) -> int:
    """Duration of an Opus packet in 48 kHz samples, read from its TOC byte and frame count code.

    Raises ValueError for a packet too short to say, a code 3 packet with no frames, or one longer
    than the 120 ms the RFC allows.
    """
    if not packet:
        raise ValueError("empty Opus packet has no TOC byte")
    toc = packet[0]
    frame = _CONFIG_SAMPLES[toc >> 3]
    code = toc & 0x03
    if code == 0:
        count = 1
    elif code in (1, 2):
        count = 2
    else:
        if len(packet) < 2:
            raise ValueError("Opus code 3 packet is missing its frame count byte")
        count = packet[1] & 0x3F
        if count == 0:
            raise ValueError("Opus code 3 packet declares zero frames")
    total = frame * count
    if total > _MAX_PACKET_SAMPLES:
        raise ValueError(f"Opus packet lasts {total / 48:.1f} ms, more than the 120 ms allowed")
    return total


class OpusEncoder:
    """Mono PCM at any rate in, Opus packets out (libopus through PyAV).

    `encode` buffers whatever does not fill a whole frame; `flush` pads that remainder with zeros,
    drains the encoder's lookahead and leaves the encoder ready for a new stream. Rates libopus
    takes natively (48/24/16/12/8 kHz) are encoded as they are; others are resampled to 48 kHz.
    """

    def __init__(self, input_rate: int, *, bitrate: int = 32000, frame_ms: float = 20.0) -> None:
        if input_rate <= 0:
            raise ValueError(f"input_rate must be positive, got {input_rate}")
        if frame_ms not in FRAME_MS:
            raise ValueError(f"frame_ms must be one of {FRAME_MS}, got {frame_ms}")
        self.input_rate = input_rate
        self.bitrate = bitrate
        self.frame_ms = frame_ms
        self.codec_rate = input_rate if input_rate in _NATIVE_RATES else RTP_CLOCK_HZ
        self.frame_samples = round(self.codec_rate * frame_ms / 1000)
        self._pending = np.zeros(0, np.float32)
        self._codec, self._resampler = self._open()
        self._pts = 0
        self._levels: deque[float] = deque()
        """RMS of each frame given to libopus and not yet out as a packet (its lookahead)."""

    def _open(self) -> tuple[av.AudioCodecContext, av.AudioResampler | None]:
        codec = av.CodecContext.create("libopus", "w")
        assert isinstance(codec, av.AudioCodecContext)
        codec.sample_rate = self.codec_rate
        codec.layout = "mono"
        codec.format = "flt"
        codec.bit_rate = self.bitrate
        codec.options = {"frame_duration": f"{self.frame_ms:g}"}
        codec.open()
        resampler = None
        if self.codec_rate != self.input_rate:
            resampler = av.AudioResampler(format="flt", layout="mono", rate=self.codec_rate)
        return codec, resampler

    def encode(self, pcm: np.ndarray) -> list[OpusPacket]:
        """Encode float mono PCM at `input_rate`; returns the packets for every whole frame so far."""
        samples = np.asarray(pcm)
        if samples.ndim != 1 or not np.issubdtype(samples.dtype, np.floating):
            raise ValueError(f"expected 1-D float PCM, got {samples.dtype} with shape {samples.shape}")
        if samples.size == 0:
            return []
        samples = samples.astype(np.float32, copy=False)
        if self._resampler is not None:
            frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="flt", layout="mono")
            frame.sample_rate = self.input_rate
            samples = self._resampled(self._resampler.resample(frame))
        return self._encode_codec_rate(samples)

    def flush(self) -> list[OpusPacket]:
        """End the stream: pad the last partial frame with zeros and return every packet left.

        The encoder starts a fresh stream afterwards, so one instance can encode many utterances.
        """
        packets: list[OpusPacket] = []
        if self._resampler is not None:
            packets += self._encode_codec_rate(self._resampled(self._resampler.resample(None)))
        if self._pending.size:
            pad = np.zeros(self.frame_samples - self._pending.size, np.float32)
            packets += self._encode_codec_rate(pad)
        packets += self._packets(self._codec.encode(None))
        self._codec, self._resampler = self._open()
        self._pts = 0
        self._levels.clear()
        return packets

    @staticmethod
    def _resampled(frames: list[av.AudioFrame]) -> np.ndarray:
        if not frames:
            return np.zeros(0, np.float32)
        return np.concatenate([f.to_ndarray().reshape(-1) for f in frames]).astype(np.float32, copy=False)

    def _encode_codec_rate(self, samples: np.ndarray) -> list[OpusPacket]:
        buffered = np.concatenate([self._pending, samples]) if self._pending.size else samples
        whole = buffered.size - buffered.size % self.frame_samples
        packets: list[OpusPacket] = []
        for start in range(0, whole, self.frame_samples):
            chunk = buffered[start : start + self.frame_samples]
            frame = av.AudioFrame.from_ndarray(chunk.reshape(1, -1), format="flt", layout="mono")
            frame.sample_rate = self.codec_rate
            frame.pts = self._pts
            self._pts += self.frame_samples
            self._levels.append(float(np.sqrt(np.mean(np.square(chunk, dtype=np.float64)))))
            packets += self._packets(self._codec.encode(frame))
        self._pending = buffered[whole:].copy()
        return packets

    def _packets(self, raw: list[av.Packet]) -> list[OpusPacket]:
        """Packets in the order frames went in: each carries the level of the frame it encodes."""
        out = []
        for p in raw:
            data = bytes(p)
            level = self._levels.popleft() if self._levels else 0.0
            out.append(OpusPacket(data=data, samples=toc_duration_samples(data), level=level))
        return out


class OpusLevelMeter:
    """Decodes an Opus stream only to measure the RMS level of each packet (for packets that are
    passed through untouched, whose PCM the server never sees otherwise)."""

    def __init__(self) -> None:
        codec = av.CodecContext.create("libopus", "r")
        assert isinstance(codec, av.AudioCodecContext)
        codec.sample_rate = RTP_CLOCK_HZ
        codec.layout = "mono"
        self._codec = codec

    def level(self, packet: bytes) -> float:
        """RMS (0..1) of the packet's decoded audio; 0 when it does not decode."""
        try:
            frames = self._codec.decode(av.Packet(packet))
        except av.error.FFmpegError:
            return 0.0
        pcm = [f.to_ndarray().reshape(-1) for f in frames]
        if not pcm:
            return 0.0
        audio = np.concatenate(pcm).astype(np.float64)
        if np.issubdtype(pcm[0].dtype, np.integer):
            audio /= 32768.0
        return float(np.sqrt(np.mean(np.square(audio))))


def decode_opus_frames(packets: list[bytes]) -> np.ndarray:
    """Opus packets of one stream decoded with a fresh decoder: float32 mono at 48 kHz."""
    if not packets:
        return np.zeros(0, np.float32)
    codec = av.CodecContext.create("libopus", "r")
    assert isinstance(codec, av.AudioCodecContext)
    codec.sample_rate = RTP_CLOCK_HZ
    codec.layout = "mono"
    chunks = []
    for data in packets:
        try:
            frames = codec.decode(av.Packet(data))
        except av.error.FFmpegError:
            continue
        for frame in frames:
            pcm = frame.to_ndarray().reshape(-1).astype(np.float32)
            chunks.append(pcm / 32768.0 if np.issubdtype(frame.to_ndarray().dtype, np.integer) else pcm)
    return np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
