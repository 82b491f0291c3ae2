"""WebRTC for one session: the aiortc peer connection, its media in, and its speech out.

Invariants:
- Every microphone and camera frame the browser sends is consumed as it arrives (so aiortc's
  buffers never fill) and handed to the session; nothing here blocks on a model.
- Which addresses and ports media uses is set once per process (parley.ingress.ice); a node behind 1:1
  NAT gets its public address written into the answer's host candidates.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable, Sequence

import numpy as np
from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCRtpReceiver, RTCSessionDescription
from aiortc.jitterbuffer import JitterBuffer, JitterFrame
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.rtp import RtpPacket

from media.opus import decode_opus_frames
from media.track import PacingTrack
from parley.config import IceServer
from parley.engine.ports import MediaSink
from parley.ingress.ice import advertise_public
from parley.ingress.senderclock import SenderClock

log = logging.getLogger("parley.rtc")


def rtc_configuration(servers: Sequence[IceServer]) -> RTCConfiguration:
    return RTCConfiguration(iceServers=[RTCIceServer(urls=s.urls, username=s.username, credential=s.credential) for s in servers])


ICE_LIMIT_S = 30.0
"""A peer whose ICE has not connected this long after the answer is closed."""

OPUS_RATE = 48000
"""Opus's RTP clock rate (whatever rate the audio itself was sampled at)."""

PREROLL_FRAMES = 20
"""Encoded microphone frames (20 ms each) kept while nobody listens: more than the recorder's preroll."""


class MicrophoneBuffer(JitterBuffer):
    """The receiver's jitter buffer for the microphone, which hands each packet to the decoder as
    soon as it arrives, and only while the session listens.

    aiortc's buffer releases a frame only once a packet of the next frame has arrived (and holds
    four before the first): a cushion for smooth playout. The server never plays the microphone;
    it listens for the end of speech and for barge-in, where that cushion is pure delay, and a
    microphone that goes silent between words (Chromium's WebAudio, Opus DTX) would leave its last
    packet in the buffer until the next words. An Opus RTP packet is always one whole frame
    (RFC 7587), so here every new packet is a frame at once; a duplicate or a packet older than
    the last one handed on (reordered) is dropped, and the recorder hears a lost one as silence.
    With push-to-talk nobody listens between turns: decoding every packet then was an idle
    session's largest cost. While `listening()` is false, frames are kept encoded (the last
    `PREROLL_FRAMES`) instead of decoded; `preroll()` decodes them when a recording starts.
    """

    def __init__(self, listening: Callable[[], bool]) -> None:
        super().__init__(capacity=16)  # aiortc's own buffering is not used (add is replaced)
        self._listening = listening
        self._kept: deque[JitterFrame] = deque(maxlen=PREROLL_FRAMES)
        self._last_sequence: int | None = None
        self.clock = SenderClock(OPUS_RATE, origin=None)
        """Where the sender's RTP clock is now, from the arrivals of every packet, in the decoded
        frames' timestamps (aiortc counts those from the first frame it decodes)."""

    def add(self, packet: RtpPacket) -> tuple[bool, JitterFrame | None]:
        self.clock.observe(packet.timestamp)
        if self._last_sequence is not None and not 0 < (packet.sequence_number - self._last_sequence) % 65536 < 32768:
            return False, None  # a duplicate, or older than what was handed on already
        self._last_sequence = packet.sequence_number
        # The receiver stores the depayloaded payload as packet._data, which aiortc's own buffer
        # reads the same way (aiortc 1.16, pinned in requirements.txt).
        frame = JitterFrame(data=packet._data, timestamp=packet.timestamp)  # type: ignore[attr-defined]
        if not self._listening():
            self._kept.append(frame)
            return False, None
        if self.clock.origin is None:
            self.clock.origin = frame.timestamp
        return False, frame

    def preroll(self) -> np.ndarray:
        """The kept frames decoded: float32 mono at 48 kHz, oldest first (then forgotten)."""
        frames, self._kept = list(self._kept), deque(maxlen=PREROLL_FRAMES)
        return decode_opus_frames([f.data for f in frames])


def listen_to_microphone(receiver: RTCRtpReceiver, session: MediaSink) -> None:
    """Give the receiver a `MicrophoneBuffer` gated by the session's recorder. (aiortc 1.16 has no
    setting for its jitter buffer; it is replaced on the receiver.)"""
    name = "_RTCRtpReceiver__jitter_buffer"
    if not hasattr(receiver, name):
        log.warning("aiortc's receiver has no %s: microphone audio is decoded all the time, 80 ms late", name)
        return
    buffer = MicrophoneBuffer(lambda: session.listening)
    setattr(receiver, name, buffer)
    session.connect_microphone(buffer.clock, buffer.preroll)


class SdpError(ValueError):
    """The browser's session description could not be used."""


class Peer:
    """One RTCPeerConnection between a browser and its session."""

    def __init__(self, session: MediaSink, ice_servers: Sequence[IceServer], public_address: str | None = None) -> None:
        self.session = session
        self.public_address = public_address
        self.pc = RTCPeerConnection(rtc_configuration(ice_servers))
        self.track = PacingTrack()
        self.late_reported = 0
        """How many of the track's late packets the server has already counted in its metrics."""
        self._readers: list[asyncio.Task[None]] = []
        self.pc.on("track", self._on_track)
        self.pc.on("connectionstatechange", self._on_state)

    async def answer(self, sdp: str, kind: str) -> RTCSessionDescription:
        """Take the browser's offer and return our answer (with all our candidates in it)."""
        if kind != "offer":
            raise SdpError(f"expected an offer, got {kind!r}")
        try:
            await self.pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
        except Exception as exc:
            raise SdpError(f"the offer could not be read: {exc}") from exc
        if not any(t.kind == "audio" for t in self.pc.getTransceivers()):
            raise SdpError("the offer has no audio section")
        self.pc.addTrack(self.track)  # reuses the offer's audio transceiver: sendrecv
        self.session.connect_output(self.track)
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        answer = self.pc.localDescription
        if self.public_address:
            return RTCSessionDescription(sdp=advertise_public(answer.sdp, self.public_address), type=answer.type)
        return answer

    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind == "audio":
            for transceiver in self.pc.getTransceivers():
                if transceiver.receiver.track is track:
                    listen_to_microphone(transceiver.receiver, self.session)
        self._readers.append(asyncio.get_running_loop().create_task(self._read(track)))

    async def _read(self, track: MediaStreamTrack) -> None:
        handle = self.session.on_audio_frame if track.kind == "audio" else self.session.on_video_frame
        try:
            while True:
                frame = await track.recv()
                handle(frame)  # type: ignore[arg-type]
        except MediaStreamError:
            pass
        except Exception:
            log.exception("session %s: reading %s failed", self.session.id[:8], track.kind)

    def watch_connecting(self, limit_s: float = ICE_LIMIT_S) -> None:
        """Close the peer if it has not connected within `limit_s` of the answer: an offer whose ICE
        never completes would otherwise hold its ports and its session's track forever."""

        async def check() -> None:
            await asyncio.sleep(limit_s)
            if self.pc.connectionState not in ("connected", "closed"):
                log.info("session %s: no media after %.0f s; closing its peer", self.session.id[:8], limit_s)
                await self.close()

        self._readers.append(asyncio.get_running_loop().create_task(check()))

    async def _on_state(self) -> None:
        log.info("session %s: peer %s", self.session.id[:8], self.pc.connectionState)
        if self.pc.connectionState in ("failed", "closed"):
            await self.close()

    async def close(self) -> None:
        for task in self._readers:
            task.cancel()
        for task in self._readers:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._readers.clear()
        self.session.disconnect_output(self.track)
        self.track.stop()
        await self.pc.close()
