"""WebRTC for one session: the aiortc peer connection, its media in, and its speech out.

Invariants:
- Every microphone and camera frame the browser sends is consumed as it arrives (so aiortc's
  buffers never fill) and handed to the session; nothing here blocks on a model.
- Which addresses and ports media uses is set once per process (parley.ice); a node behind 1:1
  NAT gets its public address written into the answer's host candidates.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence

from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCRtpReceiver, RTCSessionDescription
from aiortc.jitterbuffer import JitterBuffer
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from media.track import PacingTrack
from parley.config import IceServer
from parley.ice import advertise_public
from parley.session import Session

log = logging.getLogger("parley.rtc")


def rtc_configuration(servers: Sequence[IceServer]) -> RTCConfiguration:
    return RTCConfiguration(iceServers=[RTCIceServer(urls=s.urls, username=s.username, credential=s.credential) for s in servers])


def release_audio_at_once(receiver: RTCRtpReceiver) -> None:
    """Hand each microphone frame over as soon as it is complete, instead of 80 ms later.

    aiortc's audio jitter buffer holds four frames before releasing one, a cushion for smooth
    playout. The server never plays the microphone: it listens for the end of speech and for
    barge-in, where those 80 ms are pure delay. Frames still come out in order, as each next one
    arrives. (aiortc 1.16 has no setting for it; the buffer is replaced on the receiver.)
    """
    name = "_RTCRtpReceiver__jitter_buffer"
    if not hasattr(receiver, name):
        log.warning("aiortc's receiver has no %s: microphone audio keeps its 80 ms prefetch", name)
        return
    setattr(receiver, name, JitterBuffer(capacity=16, prefetch=1))


class SdpError(ValueError):
    """The browser's session description could not be used."""


class Peer:
    """One RTCPeerConnection between a browser and its session."""

    def __init__(self, session: Session, ice_servers: Sequence[IceServer], public_address: str | None = None) -> None:
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
        self.session.set_track(self.track)
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        answer = self.pc.localDescription
        if self.public_address:
            return RTCSessionDescription(sdp=advertise_public(answer.sdp, self.public_address), type=answer.type)
        return answer

    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind == "audio":
            for transceiver in self.pc.getTransceivers():
                if transceiver.receiver.track is track:
                    release_audio_at_once(transceiver.receiver)
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
        if self.session.track is self.track:
            self.session.set_track(None)
        self.track.stop()
        await self.pc.close()
