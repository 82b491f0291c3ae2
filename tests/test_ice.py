"""ICE settings of a node: advertised addresses, a UDP port range, and a public address (1:1 NAT)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from typing import cast

import pytest
from aiortc import RTCPeerConnection

from parley.config import ParleyConfig
from parley.engine.services import Services
from parley.engine.session import Session
from parley.ingress.ice import advertise_public, configure_ice, parse_port_range
from parley.ingress.rtc import Peer
from parley.policy import session_settings

PUBLIC = "203.0.113.7"  # TEST-NET-3: documentation only; nothing is ever sent to it here


@pytest.fixture(autouse=True)
def loopback_ice() -> Iterator[None]:
    yield
    configure_ice(["127.0.0.1"], None)  # what the other tests in this process expect


def candidates(sdp: str) -> list[tuple[str, int]]:
    return [(a, int(p)) for a, p in re.findall(r"^a=candidate:\S+ \d+ udp \d+ (\S+) (\d+) typ host", sdp, re.M)]


def test_port_ranges_are_checked() -> None:
    assert parse_port_range("50000-50009") == range(50000, 50010)
    for bad in ("50010-50000", "80-90", "60000-70000"):
        with pytest.raises(ValueError):
            parse_port_range(bad)


def test_public_address_replaces_host_candidates_only() -> None:
    sdp = (
        "v=0\r\na=candidate:1 1 udp 2130706431 10.0.0.5 50001 typ host\r\n"
        "a=candidate:2 1 udp 1694498815 198.51.100.9 61000 typ srflx raddr 10.0.0.5 rport 50001\r\n"
    )
    rewritten = advertise_public(sdp, PUBLIC)
    assert f"a=candidate:1 1 udp 2130706431 {PUBLIC} 50001 typ host" in rewritten
    assert "198.51.100.9 61000 typ srflx raddr 10.0.0.5" in rewritten


async def test_media_binds_inside_the_port_range_and_still_connects() -> None:
    configure_ice(["127.0.0.1"], parse_port_range("52000-52009"))
    caller, callee = RTCPeerConnection(), RTCPeerConnection()
    try:
        caller.addTransceiver("audio")
        await caller.setLocalDescription(await caller.createOffer())
        await callee.setRemoteDescription(caller.localDescription)
        await callee.setLocalDescription(await callee.createAnswer())
        await caller.setRemoteDescription(callee.localDescription)
        found = candidates(caller.localDescription.sdp) + candidates(callee.localDescription.sdp)
        assert found and all(a == "127.0.0.1" and 52000 <= p <= 52009 for a, p in found), found
        async with asyncio.timeout(10):
            while callee.iceConnectionState not in ("connected", "completed"):
                await asyncio.sleep(0.05)
    finally:
        await caller.close()
        await callee.close()


async def test_an_answer_behind_nat_offers_the_public_address() -> None:
    configure_ice(["127.0.0.1"], None)
    session = Session("n" * 12, session_settings(ParleyConfig()), cast(Services, None))  # no turn is ever run
    browser = RTCPeerConnection()
    peer = Peer(session, [], public_address=PUBLIC)
    try:
        browser.addTransceiver("audio")
        await browser.setLocalDescription(await browser.createOffer())
        answer = await peer.answer(browser.localDescription.sdp, "offer")
        found = candidates(answer.sdp)
        assert found and all(a == PUBLIC for a, _ in found)
    finally:  # the browser never takes the answer: nothing is sent towards the public address
        await peer.close()
        await browser.close()


def test_each_user_gets_short_lived_relay_credentials_of_their_own() -> None:
    import base64
    import hashlib
    import hmac
    import time

    from parley.config import IceServer
    from parley.ingress.ice import relay_credentials

    servers = [
        IceServer(urls=["stun:stun.example.org:3478"]),
        IceServer(urls=["turn:turn.example.org:3478?transport=udp"]),
        IceServer(urls=["turn:static.example.org"], username="fixed", credential="kept"),
    ]
    assert relay_credentials(servers, None, "alice", 60) == servers, "no secret: nothing changes"
    stun, turn, static = relay_credentials(servers, "s3cret", "alice", 3600)
    assert stun.username is None and static.username == "fixed"
    expiry, user = (turn.username or "").split(":")
    assert user == "alice" and 3500 < int(expiry) - time.time() <= 3600
    expected = base64.b64encode(hmac.new(b"s3cret", (turn.username or "").encode(), hashlib.sha1).digest()).decode()
    assert turn.credential == expected  # what coturn's use-auth-secret checks
    assert relay_credentials(servers, "s3cret", "bob", 3600)[1].username != turn.username
