"""WebRTC for one session: the aiortc peer connection, its media in, and its speech out.

Invariants:
- Every microphone and camera frame the browser sends is consumed as it arrives (so aiortc's
  buffers never fill) and handed to the session; nothing here blocks on a model. The microphone
  is decoded by parley.ingress.loss's buffer, through its lost packets (RED, FEC, concealment);
  Parley's voice goes out with RED where the browser offers it.
- The video decoded, and what of it reaches the session, is bounded whatever the browser sends
  (`video_max_width`, `video_max_fps`, which the browser is only asked to keep to): key frames
  over the size cap are not decoded (parley.ingress.video's buffer), nor are frames between key
  frames while many more than the rate arrive; the session gets at most one frame every
  1 / `video_max_fps` s (the newest), none over the cap, and none wider than `video_max_width`
  (scaled down).
- Which addresses and ports media uses is set once per process (parley.ingress.ice); a node behind 1:1
  NAT gets its public address written into the answer's host candidates.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence

import av
from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from media.track import PacingTrack
from parley.config import IceServer
from parley.engine.metrics import Meter
from parley.engine.ports import MediaSink
from parley.ingress.framelimit import FrameLimiter
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
        self,
        session: MediaSink,
        ice_servers: Sequence[IceServer],
        public_address: str | None = None,
        *,
        red: bool = True,
        video_max_width: int = 640,
        video_max_fps: float = 2.0,
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
        self.video_max_width = video_max_width
        self.video_max_fps = video_max_fps
        self.video = FrameLimiter(video_max_width, video_max_fps, label=f"session {session.id[:8]}: ")
        self._told_video = False
        """What of the decoded video (every video track's) reaches the session."""
        self._release: asyncio.TimerHandle | None = None
        self._summarised = False
        """Whether close() has logged the camera's summary (it may be called again)."""
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
            log.info("session %s: an offer aiortc could not read: %s", self.session.id[:8], exc)
            raise SdpError("the offer could not be read") from exc
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
            self.camera = recover_video(
                receiver, max_width=self.video_max_width, max_fps=self.video_max_fps, label=f"session {self.session.id[:8]}: "
            )
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

    def video_problem(self) -> str | None:
        """Once, when the camera's pictures are too large for the server to use (so the model cannot
        see them): what the page should say; None otherwise, and ever after."""
        dropped = self.video.too_large + (self.camera.frames_too_large if self.camera is not None else 0)
        if not dropped or self._told_video:
            return None
        self._told_video = True
        limit = 2 * self.video.max_width
        return (
            f"Your camera or screen sends pictures too large for this server (it takes up to {limit} pixels wide), "
            "so Parley cannot see them. Share a smaller window or reload the page."
        )

    def _red_types(self) -> set[int]:
        return {c.red for c in self.codecs.values() if c.red is not None}

    def _listening(self) -> bool:
        return self.session.listening

    async def _read(self, track: MediaStreamTrack) -> None:
        handle = self.session.on_audio_frame if track.kind == "audio" else self._on_video_frame
        try:
            while True:
                frame = await track.recv()
                handle(frame)  # type: ignore[arg-type]
        except MediaStreamError:
            pass
        except Exception:
            log.exception("session %s: reading %s failed", self.session.id[:8], track.kind)

    def _on_video_frame(self, frame: av.VideoFrame) -> None:
        """A decoded video frame: to the session now, later (the newest, when the rate allows) or never."""
        if (out := self.video.offer(frame)) is not None:
            self.session.on_video_frame(out)
        due = self.video.due
        if due is not None and self._release is None:
            loop = asyncio.get_running_loop()
            self._release = loop.call_later(max(0.0, due - time.monotonic()), self._release_video)

    def _release_video(self) -> None:
        self._release = None
        try:
            if (out := self.video.release()) is not None:
                self.session.on_video_frame(out)
        except Exception:
            log.exception("session %s: handing on a video frame failed", self.session.id[:8])
        due = self.video.due
        if due is not None:  # not yet (the clocks differ by a little)
            self._release = asyncio.get_running_loop().call_later(max(0.001, due - time.monotonic()), self._release_video)

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
        if self._release is not None:
            self._release.cancel()
            self._release = None
        v, c = self.video, self.camera
        v.close()
        limited = v.too_large or v.over_rate or v.scaled
        if (c is not None and (c.losses or c.frames_too_large or c.frames_over_rate)) or (limited and not self._summarised):
            log.info(
                "session %s: camera: %d frames, %d losses (%d retransmitted in time), %d frames dropped "
                "(%d over the size cap, %d over the rate), %d key frames asked; after decoding, %d frames dropped "
                "over the size cap, %d over the rate, %d scaled down, %d handed on",
                self.session.id[:8],
                c.frames if c else 0,
                c.losses if c else 0,
                c.recovered if c else 0,
                c.frames_dropped if c else 0,
                c.frames_too_large if c else 0,
                c.frames_over_rate if c else 0,
                c.plis if c else 0,
                v.too_large,
                v.over_rate,
                v.scaled,
                v.delivered,
            )
        self.camera, self._summarised = None, True
        for task in self._readers:
            task.cancel()
        for task in self._readers:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._readers.clear()
        self.session.disconnect_output(self.track)
        self.track.stop()
        await self.pc.close()
