"""WebRTC for one session: the aiortc peer connection, its media in, and its speech out.

Invariants:
- Every microphone and camera frame the browser sends is consumed as it arrives (so aiortc's
  buffers never fill) and handed to the session; nothing here blocks on a model. The microphone
  is decoded by parley.ingress.loss's buffer, through its lost packets (RED, FEC, concealment);
  Parley's voice goes out with RED where the browser offers it.
- Which addresses and ports media uses is set once per process (parley.ingress.ice); a node behind 1:1
  NAT gets its public address written into the answer's host candidates.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence

from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from media.track import PacingTrack
from parley.config import IceServer
from parley.engine.metrics import Meter
from parley.engine.ports import MediaSink
from parley.ingress.ice import advertise_public
from parley.ingress.loss import AudioCodecs, MicrophoneBuffer, listen_to_microphone, negotiate, send_red
from parley.ingress.video import VideoBuffer, recover_video

log = logging.getLogger("parley.rtc")


def rtc_configuration(servers: Sequence[IceServer]) -> RTCConfiguration:
    return RTCConfiguration(iceServers=[RTCIceServer(urls=s.urls, username=s.username, credential=s.credential) for s in servers])


ICE_LIMIT_S = 30.0
"""A peer whose ICE has not connected this long after the answer is closed."""


class SdpError(ValueError):
    """The browser's session description could not be used."""


class Peer:
    """One RTCPeerConnection between a browser and its session."""

    def __init__(
        self, session: MediaSink, ice_servers: Sequence[IceServer], public_address: str | None = None, *, red: bool = True
    ) -> None:
        self.session = session
        self.public_address = public_address
        self.red = red
        self.pc = RTCPeerConnection(rtc_configuration(ice_servers))
        self.track = PacingTrack()
        self.codecs: dict[str, AudioCodecs] = {}
        """What each audio m-line negotiated (Opus, and RED where the browser offered it)."""
        self.microphone: MicrophoneBuffer | None = None
        self.camera: VideoBuffer | None = None
        self.late_reported = 0
        """How many of the track's late packets the server has already counted in its metrics."""
        self.microphone_reported: dict[str, int] = {}
        """The microphone's packet counts (by outcome) the server has already counted in its metrics."""
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
        self.codecs = negotiate(self.pc, sdp, use_red=self.red)
        if self.microphone is not None:  # aiortc announced the track inside setRemoteDescription
            self.microphone.red_types = self._red_types()
        self.pc.addTrack(self.track)  # reuses the offer's audio transceiver: sendrecv
        send_red(self.pc, self.codecs)
        self.session.connect_output(self.track)
        await self.pc.setLocalDescription(await self.pc.createAnswer())
        answer = self.pc.localDescription
        if self.public_address:
            return RTCSessionDescription(sdp=advertise_public(answer.sdp, self.public_address), type=answer.type)
        return answer

    def _on_track(self, track: MediaStreamTrack) -> None:
        receiver = next((t.receiver for t in self.pc.getTransceivers() if t.receiver.track is track), None)
        if receiver is not None and track.kind == "audio":
            self.microphone = listen_to_microphone(receiver, self.session.on_audio_frame, self._listening, self._red_types())
            if self.microphone is not None:  # it decodes and delivers every frame itself: no track to read
                self.session.connect_microphone(self.microphone.clock, self.microphone.preroll)
                return
        elif receiver is not None:
            self.camera = recover_video(receiver)
        self._readers.append(asyncio.get_running_loop().create_task(self._read(track)))

    def report(self, meter: Meter) -> None:
        """Count in the metrics what this peer's audio went through since the last report: its
        packets that left late, and its microphone's packets by outcome."""
        late, self.late_reported = self.track.late_packets - self.late_reported, self.track.late_packets
        if late:
            meter.late_packets(late)
        if self.microphone is not None:
            counts = self.microphone.stats.counts()
            for outcome, count in counts.items():
                if more := count - self.microphone_reported.get(outcome, 0):
                    meter.microphone_packets(outcome, more)
            self.microphone_reported = counts

    def _red_types(self) -> set[int]:
        return {c.red for c in self.codecs.values() if c.red is not None}

    def _listening(self) -> bool:
        return self.session.listening

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
        if self.microphone is not None and self.microphone.stats.packets:
            log.info("session %s: microphone: %s", self.session.id[:8], self.microphone.stats.summary())
            self.microphone = None
        if self.camera is not None and self.camera.losses:
            c = self.camera
            log.info(
                "session %s: camera: %d frames, %d losses (%d retransmitted in time), %d frames dropped, %d key frames asked",
                self.session.id[:8],
                c.frames,
                c.losses,
                c.recovered,
                c.frames_dropped,
                c.plis,
            )
            self.camera = None
        for task in self._readers:
            task.cancel()
        for task in self._readers:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._readers.clear()
        self.session.disconnect_output(self.track)
        self.track.stop()
        await self.pc.close()
