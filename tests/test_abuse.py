"""One admitted user (or one fault) must not starve or crash a node (issue 27): each probe is done
as a client would do it, against a real ingress on loopback, and then a normal user is served.
Bounded in count and time; loopback only."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import aiohttp
import pytest
from aiortc import RTCPeerConnection

import parley.ingress.signalling
from parley.config import ParleyConfig
from parley.engine.messages import Entry
from parley.engine.services import Services
from parley.ingress.ice import configure_ice
from parley.ingress.offers import OfferRefused, check_offer
from parley.ingress.rtc import Peer
from parley.ingress.server import IngressServer
from tests.support.client import ParleyClient, connected
from tests.support.network import free_port, loopback_only


def config_of(tmp_path: Path, **sections: dict[str, Any]) -> ParleyConfig:
    server = {"port": free_port(), "state_dir": str(tmp_path)} | sections.pop("server", {})
    webrtc = {"ice_addresses": ["127.0.0.1"]} | sections.pop("webrtc", {})
    return ParleyConfig.model_validate({"server": server, "webrtc": webrtc, **sections})


@pytest.fixture
async def ingress(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[IngressServer]:
    sections = getattr(request, "param", {})
    server = IngressServer(config_of(tmp_path, **sections), cast(Services, None))
    await server.start()
    yield server
    await server.stop()


async def an_offer(*, audio: int = 1, video: int = 1) -> str:
    configure_ice(["127.0.0.1"], None)
    pc = RTCPeerConnection()
    try:
        for _ in range(audio):
            pc.addTransceiver("audio")
        for _ in range(video):
            pc.addTransceiver("video")
        await pc.setLocalDescription(await pc.createOffer())
        return pc.localDescription.sdp
    finally:
        await pc.close()


async def a_normal_user_is_served(url: str) -> None:
    """Someone else (another address) connects and gets an answer to an offer, promptly."""
    began = time.monotonic()
    other = await connected(url, source_address="127.0.0.9")
    try:
        await other.sio.emit("offer", {"sdp": await an_offer(), "type": "offer"})
        await other.wait_for(lambda: other.of("answer"), timeout=10)
    finally:
        await other.close()
    assert time.monotonic() - began < 10


@pytest.fixture
def peers_made(monkeypatch: pytest.MonkeyPatch) -> list[Peer]:
    """Every Peer the ingress makes."""
    made: list[Peer] = []
    real = parley.ingress.signalling.Peer

    def make(*args: Any, **kwargs: Any) -> Peer:
        peer = real(*args, **kwargs)
        made.append(peer)
        return peer

    monkeypatch.setattr(parley.ingress.signalling, "Peer", make)
    return made


# -- offers -------------------------------------------------------------------------------------


async def test_offers_sent_at_once_leave_one_peer_and_none_after_the_socket_goes(
    ingress: IngressServer, peers_made: list[Peer]
) -> None:
    client = await connected(ingress.url)
    sdp = await an_offer()
    try:
        await asyncio.gather(*(client.sio.emit("offer", {"sdp": sdp, "type": "offer"}) for _ in range(5)))
        await client.wait_for(lambda: len(client.of("answer")) + len(client.of("notice")) >= 5, timeout=20)
        said = [n["text"] for n in client.of("notice")]
        assert not any("could not handle" in text for text in said), said
        assert client.of("answer"), "the first offer was answered"
        assert all("already being set up" in text for text in said), said
        assert len(ingress.peers) == 1
        live = [p for p in peers_made if p.pc.connectionState != "closed"]
        assert len(live) <= 1, "never more than one peer for a session"
    finally:
        await client.close()
    await client.wait_for(lambda: not ingress.peers, timeout=10)
    await client.wait_for(lambda: all(p.pc.connectionState == "closed" for p in peers_made), timeout=10)
    await a_normal_user_is_served(ingress.url)


async def test_an_offer_of_many_media_sections_is_refused_before_anything_opens(
    ingress: IngressServer, peers_made: list[Peer]
) -> None:
    client = await connected(ingress.url)
    try:
        await client.sio.emit("offer", {"sdp": await an_offer(audio=20, video=20), "type": "offer"})
        notice = await client.wait_for(lambda: client.of("notice"), timeout=10)
        assert "40 media streams" in notice[-1]["text"] and "at most 4" in notice[-1]["text"]
        assert not peers_made and not ingress.peers
        assert client.sio.connected, "the session goes on"
    finally:
        await client.close()
    await a_normal_user_is_served(ingress.url)


@pytest.mark.parametrize("ingress", [{"limits": {"offers_per_minute": 3}}], indirect=True)
async def test_offers_past_the_rate_limit_get_a_notice(ingress: IngressServer) -> None:
    client = await connected(ingress.url)
    sdp = await an_offer()
    try:
        for i in range(3):
            await client.sio.emit("offer", {"sdp": sdp, "type": "offer"})
            await client.wait_for(lambda: len(client.of("answer")) > i, timeout=10)  # noqa: B023 - awaited here
        await client.sio.emit("offer", {"sdp": sdp, "type": "offer"})
        notice = await client.wait_for(lambda: client.of("notice"), timeout=10)
        assert "restarted too often" in notice[-1]["text"]
        assert len(client.of("answer")) == 3 and len(ingress.peers) == 1
    finally:
        await client.close()


def test_candidates_the_node_must_not_check_are_removed() -> None:
    lines = [
        "a=candidate:1 1 udp 2122260223 127.0.0.1 50000 typ host",
        "a=candidate:2 1 udp 2122260223 0.0.0.0 50001 typ host",
        "a=candidate:3 1 udp 2122260223 224.0.0.251 5353 typ host",
        "a=candidate:4 1 udp 2122260223 255.255.255.255 50002 typ host",
        "a=candidate:5 1 udp 2122260223 ff02::1 50003 typ host",
        "a=candidate:6 1 udp 2122260223 metadata.internal 80 typ host",
        "a=candidate:7 1 udp 2122260223 0b7e2c4a-2d0e-4a8e-9b9e-1f1f1f1f1f1f.local 50004 typ host",
        "a=candidate:8 1 udp 1686052607 203.0.113.7 50005 typ srflx raddr 0.0.0.0 rport 0",
        "a=candidate:9 1 udp 2122260223 240.0.0.1 50006 typ host",
    ]
    sdp = "\r\n".join(["v=0", "m=audio 9 UDP/TLS/RTP/SAVPF 111", *lines, ""])
    checked = check_offer(sdp, max_sections=4, max_candidates=32)
    kept = [line.split()[4] for line in checked.sdp.split("\r\n") if line.startswith("a=candidate")]
    assert kept == ["127.0.0.1", "0b7e2c4a-2d0e-4a8e-9b9e-1f1f1f1f1f1f.local", "203.0.113.7"]
    assert checked.dropped_candidates == 6

    many = "\r\n".join(["v=0", "m=audio 9 UDP/TLS/RTP/SAVPF 111", *(lines[0].replace("1 1", f"{i} 1", 1) for i in range(100))])
    kept_of_many = check_offer(many, max_sections=4, max_candidates=32).sdp.split("\r\n")
    assert sum(line.startswith("a=candidate") for line in kept_of_many) == 32
    with pytest.raises(OfferRefused, match="5 media streams"):
        check_offer("v=0\r\n" + "m=audio 9 UDP/TLS/RTP/SAVPF 111\r\n" * 5, max_sections=4, max_candidates=32)


# -- detached sessions --------------------------------------------------------------------------


@pytest.mark.parametrize("ingress", [{"limits": {"sessions_per_user": 3}}], indirect=True)
async def test_sessions_left_behind_count_toward_the_users_cap_and_the_oldest_goes_to_the_store(
    ingress: IngressServer,
) -> None:
    first = await connected(ingress.url)
    first_id, first_key = first.session_id, first.session_key
    assert first_id is not None
    ingress.sessions[first_id].conversation.add(Entry(role="user", text="Remember the blue door."))
    await first.close()
    for _ in range(12):  # connect, hello, go: each leaves a session behind
        client = await connected(ingress.url)
        await client.close()
    await client.wait_for(lambda: ingress.signalling.attached == 0, timeout=10)  # the server saw each one go
    assert len(ingress.sessions) <= 3, "one user holds at most their cap in memory, attached or not"
    assert first_id not in ingress.sessions, "the oldest was forgotten first"

    back = ParleyClient(ingress.url)
    back.session_id, back.session_key = first_id, first_key
    welcome = await back.connect(media=False)
    try:
        assert welcome["session_id"] == first_id
        assert [m["text"] for m in welcome["history"]] == ["Remember the blue door."], "its conversation was in the store"
    finally:
        await back.close()


@pytest.mark.parametrize("ingress", [{"server": {"max_detached_sessions": 2}}], indirect=True)
async def test_sessions_left_behind_by_many_users_are_capped_per_process(ingress: IngressServer) -> None:
    for i in range(8):
        client = await connected(ingress.url, source_address=f"127.0.0.{10 + i}")
        await client.close()
    await client.wait_for(lambda: ingress.signalling.attached == 0, timeout=10)  # the server saw each one go
    assert len(ingress.signalling.detached()) <= 2
    async with aiohttp.ClientSession() as http, http.get(ingress.url + "healthz") as reply:
        health = await reply.json()
    assert health["detached_sessions"] == len(ingress.signalling.detached())
    await a_normal_user_is_served(ingress.url)


# -- housekeeping -------------------------------------------------------------------------------


@pytest.mark.parametrize("ingress", [{"server": {"session_idle_s": 0.5}}], indirect=True)
async def test_a_store_error_does_not_end_the_housekeeping(ingress: IngressServer, monkeypatch: pytest.MonkeyPatch) -> None:
    store = ingress.store
    assert store is not None

    def broken(*_: Any) -> int:
        raise OSError("disk full")

    monkeypatch.setattr(store, "forget_older_than", broken)
    ingress._forgot = 0.0  # the next round deletes old conversations (and fails)
    client = await connected(ingress.url)
    await client.wait_for(lambda: ingress.housekeeping_failures >= 1, timeout=10)
    await client.close()
    await client.wait_for(lambda: not ingress.sessions, timeout=10)  # sessions still expire after the failure


# -- the page -----------------------------------------------------------------------------------


async def test_index_html_has_the_same_headers_as_the_root(ingress: IngressServer) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(ingress.url) as root:
            expected = root.headers["Content-Security-Policy"]
        async with http.get(ingress.url + "index.html") as page:
            assert page.status == 200
            assert page.headers["Content-Security-Policy"] == expected
            assert page.headers["X-Content-Type-Options"] == "nosniff"
        async with http.get(ingress.url + "app.js") as script:
            assert script.headers["X-Content-Type-Options"] == "nosniff"


# -- the talk key -------------------------------------------------------------------------------


async def test_a_talk_key_pressed_over_and_over_costs_the_models_no_more_than_the_turn_budget() -> None:
    import av
    import numpy as np

    from tests.support.fake_services import ScriptedServices, make_session, wait_until

    services = ScriptedServices(["Hi."])
    session, page, _ = make_session(services, vision={"enabled": True}, turns_per_minute=3)
    session.on_video_frame(av.VideoFrame.from_ndarray(np.zeros((240, 320, 3), np.uint8), format="rgb24"))
    for _ in range(8):
        await session.talk_start()
        await asyncio.sleep(0.1)  # the scene note is asked for while the key is down
        await session.talk_end()
    await wait_until(lambda: len(services.described) >= 3)
    assert len(services.described) == 3, "a scene note per press, only within the budget"
    assert any("Too many turns" in n["text"] for n in page.of("notice"))
    await session.close()


# -- history ------------------------------------------------------------------------------------


@pytest.mark.parametrize("ingress", [{"limits": {"welcome_messages": 20}}], indirect=True)
async def test_a_long_conversation_is_welcomed_a_page_at_a_time(ingress: IngressServer) -> None:
    client = await connected(ingress.url)
    assert client.session_id is not None
    session = ingress.sessions[client.session_id]
    for i in range(30):
        session.conversation.add(Entry(role="user" if i % 2 == 0 else "assistant", text=f"message {i}"))
    await client.close()
    back = ParleyClient(ingress.url)
    back.session_id, back.session_key = client.session_id, client.session_key
    welcome = await back.connect(media=False)
    try:
        assert [m["text"] for m in welcome["history"]] == [f"message {i}" for i in range(10, 30)]
        assert welcome["earlier"] == 10
    finally:
        await back.close()


# -- invitations --------------------------------------------------------------------------------


@pytest.mark.parametrize("ingress", [{"auth": {"mode": "token"}, "server": {"session_idle_s": 1.0}}], indirect=True)
async def test_a_withdrawn_invitation_closes_the_pages_already_open(ingress: IngressServer) -> None:
    from parley.ingress.auth import mint, revoke, signing_secret

    secret = signing_secret(ingress.config, create=False)
    assert secret is not None
    withdrawn, kept = ParleyClient(ingress.url, token=mint(secret, "alice", 3600, token_id="alice-link-0001")), None
    try:
        assert "session_id" in await withdrawn.connect(media=False)
        kept = await connected(ingress.url, token=mint(secret, "bob", 3600, token_id="bob-link-00001"))
        revoke(ingress.config, "alice-link-0001")
        await withdrawn.wait_for(lambda: not withdrawn.sio.connected, timeout=10)
        assert any("withdrawn" in n["text"] for n in withdrawn.of("notice"))
        assert kept.sio.connected, "other invitations go on"
        again = ParleyClient(ingress.url, token=mint(secret, "alice", 3600, token_id="alice-link-0001"))
        assert "withdrawn" in (await again.connect(media=False)).get("reason", "")
    finally:
        await withdrawn.close()
        if kept is not None:
            await kept.close()


# -- all of it at once, against the real app ----------------------------------------------------


async def typed_turn_s(client: ParleyClient, text: str) -> float:
    """Seconds from sending `text` to the answer's first words; the answer must end done."""
    before, deltas = len(client.messages("assistant")), len(client.of("delta"))
    sent = time.monotonic()
    await client.sio.emit("text", {"text": text})
    await client.wait_for(lambda: len(client.of("delta")) > deltas, timeout=90)
    first = time.monotonic() - sent
    done = await client.wait_for(
        lambda: [m for m in client.messages("assistant")[before:] if m["state"] != "streaming"], timeout=90
    )
    assert done[0]["state"] == "done" and done[0]["text"].strip(), done[0]
    return first


async def abuse(url: str, stop: asyncio.Event) -> int:
    """One admitted user doing everything above at once, until `stop` (bounded: 60 s, 200 actions)."""
    sdp, wide = await an_offer(), await an_offer(audio=20, video=20)
    actions, began = 0, time.monotonic()
    while not stop.is_set() and actions < 200 and time.monotonic() - began < 60:
        client = ParleyClient(url, source_address="127.0.0.66")
        try:
            if "session_id" not in await client.connect(media=False):
                await asyncio.sleep(0.2)
                continue
            await asyncio.gather(*(client.sio.emit("offer", {"sdp": sdp, "type": "offer"}) for _ in range(4)))
            await client.sio.emit("offer", {"sdp": wide, "type": "offer"})
            for _ in range(5):
                await client.sio.emit("talk_start")
                await client.sio.emit("talk_end")
            await asyncio.sleep(0.3)
            actions += 11
        finally:
            await client.close()  # and leave the session behind
    return actions


@pytest.mark.skipif(not loopback_only(), reason="needs a loopback-only network namespace (run scripts/test.sh as root)")
async def test_a_normal_user_is_answered_as_usual_while_another_abuses_the_node(serve_app: Any) -> None:
    user = ParleyClient(serve_app.url, source_address="127.0.0.77")
    try:
        assert "session_id" in await user.connect(media=True)
        usual = [await typed_turn_s(user, f"Name a colour, please ({i}).") for i in range(2)]
        stop = asyncio.Event()
        abuser = asyncio.create_task(abuse(serve_app.url, stop))
        await asyncio.sleep(2.0)
        during = [await typed_turn_s(user, f"Name an animal, please ({i}).") for i in range(2)]
        stop.set()
        actions = await abuser
        assert actions >= 11, "the abuse ran"
        # Loose on purpose: two cores share the models, the abuser and this test; what must hold is that
        # the normal user is answered, in the time of a turn, not of a queue behind the abuser's work.
        assert max(during) <= 3 * max(usual) + 3.0, (usual, during)
        assert user.sio.connected and user.pc is not None and user.pc.connectionState == "connected"
    finally:
        await user.close()


async def test_hellos_sent_at_once_on_one_socket_make_one_session(ingress: IngressServer) -> None:
    client = ParleyClient(ingress.url)
    await client.sio.connect(ingress.url, transports=["websocket"])
    try:
        await asyncio.gather(*(client.sio.emit("hello", {}) for _ in range(20)))
        await client.wait_for(lambda: client.of("welcome") and len(client.of("welcome")) + len(client.of("notice")) >= 20, 10)
        assert len(ingress.sessions) == 1 and len(client.of("welcome")) == 1
        assert all("already holds a conversation" in n["text"] for n in client.of("notice"))
    finally:
        await client.close()


@pytest.mark.parametrize("ingress", [{"server": {"session_idle_s": 1.0}}], indirect=True)
async def test_a_camera_sending_pictures_too_large_is_told_and_costs_no_decoding(ingress: IngressServer) -> None:
    from parley.tools.client import Camera

    camera = Camera(2560, 1440, fps=2.0)
    client = ParleyClient(ingress.url, camera=camera)
    try:
        assert "session_id" in await client.connect(media=True)
        notice = await client.wait_for(lambda: [n for n in client.of("notice") if "too large" in n["text"]], timeout=20)
        assert "up to 1280 pixels wide" in notice[0]["text"]
        (peer,) = ingress.peers.values()
        assert peer.camera is not None and peer.camera.frames_too_large >= 1
        assert peer.video.delivered == 0, "no picture of it reached the session"
        await asyncio.sleep(2.5)  # two more rounds of housekeeping (a notice that must not come has no event to wait for)
        assert len([n for n in client.of("notice") if "too large" in n["text"]]) == 1, "said once"
    finally:
        await client.close()
    await a_normal_user_is_served(ingress.url)
