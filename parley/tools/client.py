"""A Python stand-in for the browser: socket.io signalling plus an aiortc peer with a speaking mic
(and, if asked, a camera).

Used by the integration tests, the benchmarks and the load client (`python -m parley.tools.load`). It
speaks the same protocol as static/app.js, so what it proves about the server holds for the page too.
"""

from __future__ import annotations

import asyncio
import fractions
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import av
import numpy as np
import socketio
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from parley.ingress.ice import configure_ice
from parley.protocol import OUTBOUND, Hello, Inbound, Offer, TalkEnd, TalkStart

RATE = 48000
FRAME = 960


class SpeakingMic(MediaStreamTrack):
    """A microphone that sends silence until told to say something (48 kHz mono, real-time paced).

    With `echo_gain` above 0 it also picks up what the client hears (the assistant's voice from a
    loudspeaker), `echo_delay_s` later and that much quieter, mixed under whatever it says.
    """

    kind = "audio"

    def __init__(self) -> None:
        super().__init__()
        self._pending = np.zeros(0, dtype=np.float32)
        self._start: float | None = None
        self._pts = 0
        self.echo_gain = 0.0
        self.echo_delay_s = 0.1
        self._echo = np.zeros(0, dtype=np.float32)

    def say(self, audio_48k: np.ndarray) -> float:
        """Queue float32 audio at 48 kHz after what is already queued; returns the monotonic time
        at which its last sample will have been sent."""
        self._pending = np.concatenate([self._pending, np.asarray(audio_48k, np.float32)])
        return time.monotonic() + len(self._pending) / RATE

    def hear(self, audio_48k: np.ndarray) -> None:
        """What the loudspeaker just played (mono float at 48 kHz): it comes back as echo."""
        if self.echo_gain > 0:
            if not self._echo.size:
                self._echo = np.zeros(int(self.echo_delay_s * RATE), np.float32)
            self._echo = np.concatenate([self._echo, audio_48k * np.float32(self.echo_gain)])

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
        wait = self._start + self._pts / RATE - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        chunk, self._pending = self._pending[:FRAME], self._pending[FRAME:]
        chunk = np.concatenate([chunk, np.zeros(FRAME - len(chunk), dtype=np.float32)])
        echo, self._echo = self._echo[:FRAME], self._echo[FRAME:]
        chunk[: len(echo)] += echo
        pcm = (np.clip(chunk, -1, 1) * 32767).astype(np.int16)
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = RATE
        frame.pts = self._pts
        frame.time_base = fractions.Fraction(1, RATE)
        self._pts += FRAME
        return frame


@dataclass
class Heard:
    """Audio the client received from the server: (arrival time, rms) per frame, plus the samples."""

    frames: list[tuple[float, float]] = field(default_factory=list)
    samples: list[np.ndarray] = field(default_factory=list)

    def first_sound_after(self, t: float, threshold: float = 0.01) -> float | None:
        return next((at for at, rms in self.frames if at >= t and rms > threshold), None)

    def loud_frames(self, threshold: float = 0.01) -> int:
        return sum(1 for _, rms in self.frames if rms > threshold)


class Camera(MediaStreamTrack):
    """A camera: moving colour bars at `fps`, `width` x `height` (cheap to make, real to encode), or
    a still `image` (RGB, its own size)."""

    kind = "video"

    def __init__(self, width: int = 320, height: int = 240, fps: float = 15.0, image: np.ndarray | None = None) -> None:
        super().__init__()
        self.width, self.height, self.fps = width, height, fps
        self._start: float | None = None
        self._count = 0
        self._still = image is not None
        if image is not None:
            self._image = np.ascontiguousarray(image[: image.shape[0] // 2 * 2, : image.shape[1] // 2 * 2])
            return
        bars = np.repeat(np.arange(8, dtype=np.uint8) * 32, width // 8 + 1)[:width]
        self._image = np.ascontiguousarray(np.broadcast_to(bars[None, :, None], (height, width, 3)))

    @property
    def frames(self) -> int:
        """Frames handed to the encoder so far (sent on the call)."""
        return self._count

    async def recv(self) -> av.VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
        wait = self._start + self._count / self.fps - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        picture = self._image if self._still else np.roll(self._image, self._count * 4, axis=1)
        frame = av.VideoFrame.from_ndarray(picture, format="rgb24")
        frame.pts = round(self._count * 90000 / self.fps)
        frame.time_base = fractions.Fraction(1, 90000)
        self._count += 1
        return frame


class ParleyClient:
    """One simulated browser session."""

    def __init__(
        self,
        url: str,
        session_id: str | None = None,
        *,
        ssl_verify: bool = True,
        ice_addresses: Sequence[str] = ("127.0.0.1",),
        hands_free: bool = False,
        camera: Camera | None = None,
        token: str | None = None,
        session_key: str | None = None,
        source_address: str | None = None,
    ) -> None:
        self.url = url
        self.session_id = session_id
        self.session_key = session_key
        """Proves this client holds `session_id` (the server gave it in its welcome)."""
        self.token = token
        self.refused: str | None = None
        """Why the server refused the connection, if it did."""
        self.source_address = source_address
        """Connect from this local address (another 127.x.y.z looks like another machine to the server)."""
        self.hands_free = hands_free
        self.ice_addresses = list(ice_addresses)
        self.sio = socketio.AsyncClient(reconnection=False, ssl_verify=ssl_verify)
        self.events: list[tuple[float, str, dict[str, Any]]] = []
        self.mic = SpeakingMic()
        self.camera = camera
        self.heard = Heard()
        self.pc: RTCPeerConnection | None = None
        self._changed = asyncio.Event()
        self._readers: list[asyncio.Task[None]] = []
        for name in OUTBOUND:  # every event the server sends, recorded as it came
            self.sio.on(name, self._recorder(name))
        self.sio.on("connect_error", self._recorder("connect_error"))

    async def _send(self, event: Inbound) -> None:
        await self.sio.emit(event.event, event.payload())

    def _recorder(self, name: str) -> Callable[[dict[str, Any]], Any]:
        async def record(data: dict[str, Any]) -> None:
            self.events.append((time.monotonic(), name, data))
            self._changed.set()

        return record

    async def wait_for(self, predicate: Callable[[], Any], timeout: float = 30.0) -> Any:
        """Wait until predicate() is truthy, re-checking on every event; returns its value."""
        deadline = time.monotonic() + timeout
        while not (value := predicate()):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"timed out; events so far: {[(n, d) for _, n, d in self.events][-12:]}")
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), min(remaining, 0.2))
            except TimeoutError:
                pass
        return value

    def of(self, name: str) -> list[dict[str, Any]]:
        return [d for _, n, d in self.events if n == name]

    def messages(self, role: str) -> list[dict[str, Any]]:
        """The latest version of each message of a role, with streamed deltas applied."""
        found: dict[str, dict[str, Any]] = {}
        for _, name, data in self.events:
            if name == "message" and data.get("role") == role:
                found[data["id"]] = dict(data)
            elif name == "delta" and data.get("id") in found:
                found[data["id"]]["text"] += data["text"]
            elif name == "state" and data.get("id") in found:
                found[data["id"]].update(state=data["state"], error=data.get("error"), cut=bool(data.get("cut")))
                if "text" in data:  # an interruption: only what was heard stays as the text
                    found[data["id"]].update(text=data["text"], unspoken=data.get("unspoken", ""))
            elif name == "welcome":
                for entry in data.get("history", []):
                    if entry["role"] == role:
                        found[entry["id"]] = dict(entry)
        return list(found.values())

    async def connect(self, *, media: bool = True) -> dict[str, Any]:
        """Connect and say hello; returns the welcome, or {"reason": ...} if the server refused."""
        if self.source_address is not None:
            import aiohttp

            connector = aiohttp.TCPConnector(local_addr=(self.source_address, 0))
            self.sio.eio.http = aiohttp.ClientSession(connector=connector)
        try:
            await self.sio.connect(self.url, transports=["websocket"], auth={"token": self.token} if self.token else None)
        except socketio.exceptions.ConnectionError as exc:
            said = [d for _, n, d in self.events if n == "connect_error"]  # the server's reason, as the page gets it
            reason = said[-1].get("message") if said and isinstance(said[-1], dict) else (said[-1] if said else None)
            self.refused = str(reason or exc)
            return {"reason": self.refused}
        await self._send(Hello(session_id=self.session_id, session_key=self.session_key, vision=True, hands_free=self.hands_free))
        welcome: dict[str, Any] = await self.wait_for(lambda: (self.of("welcome") or self.of("rejected") or [{}])[-1])
        if "session_id" in welcome:
            self.session_id = welcome["session_id"]
            self.session_key = welcome.get("session_key")
            if self.camera is not None and welcome.get("video"):  # send what the server asks for, as the page does
                self.camera.fps = min(self.camera.fps, float(welcome["video"]["max_fps"]))
            if media:
                await self.negotiate()
        return welcome

    async def negotiate(self) -> None:
        configure_ice(self.ice_addresses, None)  # 127.0.0.1: like Chromium's --allow-loopback-in-peer-connection
        self.pc = RTCPeerConnection()
        self.pc.addTrack(self.mic)
        if self.camera is not None:
            self.pc.addTrack(self.camera)
        self.pc.on("track", lambda track: self._readers.append(asyncio.get_running_loop().create_task(self._listen(track))))
        await self.pc.setLocalDescription(await self.pc.createOffer())
        answers = len(self.of("answer"))
        await self._send(Offer(sdp=self.pc.localDescription.sdp, type="offer"))
        answer = await self.wait_for(lambda: self.of("answer")[answers:] and self.of("answer")[-1])
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer["sdp"], type=answer["type"]))
        pc = self.pc
        await self.wait_for(lambda: pc.connectionState == "connected", timeout=15)

    async def _listen(self, track: MediaStreamTrack) -> None:
        try:
            while True:
                frame = await track.recv()
                assert isinstance(frame, av.AudioFrame)
                pcm = frame.to_ndarray().astype(np.float32) / 32768.0
                mono = pcm.reshape(-1, len(frame.layout.channels)).mean(axis=1)
                self.heard.frames.append((time.monotonic(), float(np.sqrt(np.mean(pcm**2)))))
                self.heard.samples.append(pcm.reshape(-1))
                self.mic.hear(mono)
                self._changed.set()
        except MediaStreamError:
            pass

    async def push_to_talk(self, audio_48k: np.ndarray, *, hold_after_s: float = 0.3) -> float:
        """Hold talk, say the audio, release `hold_after_s` after its last sample; returns the
        monotonic time of the release."""
        await self._send(TalkStart())
        await asyncio.sleep(0.05)
        ends = self.mic.say(audio_48k)
        await asyncio.sleep(max(0.0, ends - time.monotonic()) + hold_after_s)
        released = time.monotonic()
        await self._send(TalkEnd())
        return released

    async def say(self, audio_48k: np.ndarray) -> float:
        """Hands-free: just speak; returns the monotonic time at which the speech's last sample left."""
        ends = self.mic.say(audio_48k)
        await asyncio.sleep(max(0.0, ends - time.monotonic()))
        return ends

    async def close(self) -> None:
        for task in self._readers:
            task.cancel()
        if self.pc is not None:
            await self.pc.close()
        if self.sio.connected:
            await self.sio.disconnect()
        if self.source_address is not None and self.sio.eio.http is not None:
            await self.sio.eio.http.close()
