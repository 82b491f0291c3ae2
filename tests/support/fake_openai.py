"""A small OpenAI-compatible server on loopback that speaks the real wire protocol.

It stands in for the one service tests cannot reach (OpenAI): chat completions stream as
server-sent events, and /v1/audio/speech returns a chunked Ogg Opus stream made with PyAV's
libopus from real synthesized speech, cut into odd-sized chunks so packets span HTTP chunks and
Ogg pages. It records every request, and can be told to fail in the ways real endpoints do.
"""

from __future__ import annotations

import asyncio
import io
import itertools
import json
import time
from dataclasses import dataclass, field
from typing import Any

import av
import numpy as np
from aiohttp import web

from tests.support.network import free_port
from tests.support.speech import speak

API_KEY = "sk-test-parley"
CHUNK_SIZES = (7, 333, 1001, 64, 2049, 5, 700)
"""HTTP chunk sizes cycled through for speech: small and odd, so nothing lines up with pages."""


def ogg_opus(text: str, *, rate: int = 24000) -> tuple[bytes, list[bytes]]:
    """`text` spoken (hibari) and encoded as Ogg Opus like OpenAI's response_format="opus".

    Returns the file and its audio packets as PyAV's own demuxer reads them (the reference
    that a streaming parser must reproduce exactly).
    """
    pcm = (np.clip(speak(text, rate=rate), -1, 1) * 32767).astype(np.int16)
    buf = io.BytesIO()
    with av.open(buf, "w", format="ogg") as out:
        stream = out.add_stream("libopus", rate=rate, layout="mono")
        stream.bit_rate = 32000
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = rate
        frame.pts = 0
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    data = buf.getvalue()
    with av.open(io.BytesIO(data), mode="r", format="ogg") as inp:
        packets = [bytes(p) for p in inp.demux() if p.size]
    return data, packets


@dataclass
class FakeOpenAI:
    """Configure the public fields, start(), point a client at `base_url`, read `requests`."""

    reply: list[str] = field(default_factory=lambda: ["Hello", " there", "! I can", " see", " you."])
    fail: list[int] = field(default_factory=list)
    """HTTP statuses to answer the next requests with, one per request, before behaving."""
    cut_after: int | None = None
    """Chat: drop the connection after this many deltas. Speech: after this many bytes."""
    hold_after: int | None = None
    """Speech: after this many bytes, pause until `resume` is set (or the client hangs up)."""
    resume: asyncio.Event = field(default_factory=asyncio.Event)
    holding: asyncio.Event = field(default_factory=asyncio.Event)
    """Set while a speech response is paused at `hold_after`."""
    delta_delay_s: float = 0.0
    finish_reason: str = "stop"
    """Chat: why the stream says it ended ("length": cut by max_tokens)."""
    requests: list[tuple[str, dict[str, Any], dict[str, str]]] = field(default_factory=list)
    speech: dict[str, list[bytes]] = field(default_factory=dict)
    """For each text spoken: the packets that were sent, as PyAV demuxes them."""
    deltas_sent: int = 0
    disconnected: asyncio.Event = field(default_factory=asyncio.Event)
    """Set when a client hung up on a chat or speech stream before it ended."""

    def __post_init__(self) -> None:
        self.app = web.Application()
        self.app.router.add_post("/v1/chat/completions", self._chat)
        self.app.router.add_post("/v1/audio/speech", self._speech)
        self._runner: web.AppRunner | None = None
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"

    async def start(self) -> FakeOpenAI:
        self._runner = web.AppRunner(self.app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def stop(self) -> None:
        self.resume.set()  # a held speech response finishes instead of holding up the shutdown
        if self._runner is not None:
            await self._runner.cleanup()

    def bodies(self, path: str) -> list[dict[str, Any]]:
        return [body for p, body, _ in self.requests if p == path]

    async def _gate(self, request: web.Request) -> tuple[dict[str, Any], web.Response | None]:
        body = await request.json()
        self.requests.append((request.path, body, dict(request.headers)))
        if request.headers.get("Authorization") != f"Bearer {API_KEY}":
            return body, _error(401, "Incorrect API key provided.", "invalid_api_key")
        if self.fail:
            status = self.fail.pop(0)
            return body, _error(status, f"fake failure {status}", "rate_limit_exceeded" if status == 429 else "server_error")
        return body, None

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body, refusal = await self._gate(request)
        if refusal is not None:
            return refusal
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        created = int(time.time())
        for i, delta in enumerate(self.reply):
            if self.cut_after is not None and i == self.cut_after:
                assert request.transport is not None
                request.transport.close()  # the stream dies half-way, as a dropped connection does
                return response
            await asyncio.sleep(self.delta_delay_s)
            chunk = {
                "id": "chatcmpl-fake",
                "object": "chat.completion.chunk",
                "created": created,
                "model": body.get("model", ""),
                "choices": [{"index": 0, "delta": {"content": delta}, "finish_reason": None}],
            }
            try:
                await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
            except ConnectionResetError:
                self.disconnected.set()
                return response
            self.deltas_sent += 1
        done = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": created, "model": body.get("model", "")}
        done["choices"] = [{"index": 0, "delta": {}, "finish_reason": self.finish_reason}]
        await response.write(f"data: {json.dumps(done)}\n\ndata: [DONE]\n\n".encode())
        await response.write_eof()
        return response

    async def _speech(self, request: web.Request) -> web.StreamResponse:
        body, refusal = await self._gate(request)
        if refusal is not None:
            return refusal
        if body.get("response_format") != "opus":
            return _error(400, "this fake only speaks opus", "invalid_request_error")
        data, packets = await asyncio.to_thread(ogg_opus, str(body.get("input", "")))
        self.speech[str(body.get("input", ""))] = packets
        response = web.StreamResponse(headers={"Content-Type": "audio/ogg"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        try:
            await self._send_speech(request, response, data)
        except ConnectionError:
            self.disconnected.set()
        return response

    async def _send_speech(self, request: web.Request, response: web.StreamResponse, data: bytes) -> None:
        sent = 0
        for size in itertools.cycle(CHUNK_SIZES):
            if sent >= len(data):
                break
            end = min(len(data), sent + size)
            if self.cut_after is not None and end > self.cut_after:
                await response.write(data[sent : self.cut_after])
                assert request.transport is not None
                request.transport.close()
                return
            if self.hold_after is not None and sent < self.hold_after <= end:
                end = self.hold_after
            await response.write(data[sent:end])
            sent = end
            if sent == self.hold_after and not await self._hold(request):
                self.disconnected.set()
                return
            await asyncio.sleep(0)
        await response.write_eof()

    async def _hold(self, request: web.Request) -> bool:
        """Wait for `resume`; False if the client hung up first."""
        self.holding.set()
        try:
            while not self.resume.is_set():
                if request.transport is None or request.transport.is_closing():
                    return False
                await asyncio.sleep(0.01)
            return True
        finally:
            self.holding.clear()


def _error(status: int, message: str, code: str) -> web.Response:
    return web.json_response({"error": {"message": message, "type": code, "param": None, "code": code}}, status=status)
