"""The probes of a hostile user, replayed (issue 11's table): each gets a clear answer, and the
server and everyone else's sessions go on. The ingress runs in-process without models unless a
probe needs a turn."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import aiohttp
import pytest

from parley.config import ParleyConfig
from parley.engine.services import Services
from parley.ingress.server import IngressServer
from tests.support.client import ParleyClient, connected
from tests.support.network import free_port


@pytest.fixture
async def ingress(tmp_path: Path) -> AsyncIterator[IngressServer]:
    config = ParleyConfig.model_validate(
        {"server": {"port": free_port(), "state_dir": str(tmp_path)}, "limits": {"sockets_per_address": 5}}
    )
    server = IngressServer(config, cast(Services, None))
    await server.start()
    yield server
    await server.stop()


async def test_one_socket_saying_hello_with_new_ids_holds_one_session(ingress: IngressServer) -> None:
    client = await connected(ingress.url)
    try:
        for i in range(50):
            await client.sio.emit("hello", {"session_id": f"attacker{i:04d}"})
        await client.wait_for(lambda: len(client.of("notice")) >= 50, timeout=10)
        assert len(ingress.sessions) == 1, "a socket holds one conversation"
        assert "already holds a conversation" in client.of("notice")[-1]["text"]
    finally:
        await client.close()


async def test_one_address_cannot_lock_out_another(ingress: IngressServer) -> None:
    flood = []
    try:
        for _ in range(8):  # one address tries for more than its share
            client = ParleyClient(ingress.url)
            await client.connect(media=False)
            flood.append(client)
        welcomed = sum(1 for c in flood if c.session_id)
        assert 0 < welcomed <= 5, "its connections and conversations are capped"
        other = await connected(ingress.url, source_address="127.0.0.2")  # someone else still gets in
        await other.close()
    finally:
        for client in flood:
            await client.close()


@pytest.mark.parametrize(
    ("send", "expected"),
    [
        (lambda c: c.sio.emit("text", {"text": "x" * 70_000}), "larger than 64 KB"),
        (lambda c: c.sio.emit("text", b"\x00" * 1000), "no binary messages"),
    ],
    ids=["oversized", "binary"],
)
async def test_an_oversized_or_binary_message_gets_a_notice_then_the_connection_closes(
    ingress: IngressServer, send: Any, expected: str
) -> None:
    client = await connected(ingress.url)
    bystander = await connected(ingress.url)
    try:
        await send(client)
        notice = await client.wait_for(lambda: client.of("notice"), timeout=10)
        assert expected in notice[-1]["text"]
        await client.wait_for(lambda: not client.sio.connected, timeout=10)
        assert bystander.sio.connected, "nobody else noticed"
    finally:
        await client.close()
        await bystander.close()


async def test_an_event_with_two_payloads_gets_a_notice(ingress: IngressServer) -> None:
    client = await connected(ingress.url)
    try:
        await client.sio.emit("text", ("one", "two"))
        notice = await client.wait_for(lambda: client.of("notice"), timeout=10)
        assert "takes one payload" in notice[-1]["text"]
        assert client.sio.connected
    finally:
        await client.close()


async def test_a_dns_rebinding_page_is_refused(ingress: IngressServer) -> None:
    headers = {"Host": "evil.example", "Origin": "http://evil.example"}
    async with aiohttp.ClientSession() as http:
        async with http.get(ingress.url + "socket.io/?EIO=4&transport=polling", headers=headers) as reply:
            assert reply.status == 421


async def test_an_offer_whose_ice_never_connects_is_closed(ingress: IngressServer, monkeypatch: pytest.MonkeyPatch) -> None:
    from aiortc import RTCPeerConnection

    import parley.ingress.rtc

    monkeypatch.setattr(parley.ingress.rtc, "ICE_LIMIT_S", 0.5)
    monkeypatch.setattr(parley.ingress.rtc.Peer.watch_connecting, "__defaults__", (0.5,))
    client = await connected(ingress.url)
    pc = RTCPeerConnection()
    try:
        pc.addTransceiver("audio")
        await pc.setLocalDescription(await pc.createOffer())
        await client.sio.emit("offer", {"sdp": pc.localDescription.sdp, "type": "offer"})  # and never takes the answer
        await client.wait_for(lambda: client.of("answer"), timeout=10)
        assert ingress.peers
        await asyncio.sleep(1.5)
        assert all(p.pc.connectionState == "closed" for p in ingress.peers.values()), "its ports were given back"
    finally:
        await pc.close()
        await client.close()


async def test_idle_and_half_open_connections_are_closed(tmp_path: Path) -> None:
    config = ParleyConfig.model_validate(
        {"server": {"port": free_port(), "state_dir": str(tmp_path)}, "limits": {"idle_connection_s": 1.0}}
    )
    server = IngressServer(config, cast(Services, None))
    await server.start()
    streams = []
    try:
        for i in range(40):
            reader, writer = await asyncio.open_connection("127.0.0.1", config.server.port)
            if i % 2:
                writer.write(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # headers begun, never finished
            streams.append((reader, writer))
        began = asyncio.get_running_loop().time()
        for reader, _ in streams:
            assert await asyncio.wait_for(reader.read(), timeout=10) == b"", "the server closed it without an answer"
        assert asyncio.get_running_loop().time() - began < 5
        client = await connected(server.url)  # and it still serves
        await client.close()
    finally:
        for _, writer in streams:
            writer.close()
        await server.stop()


def test_another_loopback_address_is_usable_here() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.2", 0))  # Linux routes all of 127/8 to lo: the address test above relies on it
