"""Who may connect and which conversation is whose, from the browser's side of the socket.

The ingress runs in-process without models (no turn is started); the client is the same
socket.io client the other tests use.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import aiohttp
import pytest

from parley.config import ParleyConfig
from parley.engine.conversation import Entry
from parley.engine.services import Services
from parley.ingress.auth import mint
from parley.ingress.server import IngressServer
from tests.support.client import ParleyClient
from tests.support.network import free_port

SECRET = "a-test-secret-that-is-long-enough-for-hs256"


async def server(tmp_path: Path, **sections: Any) -> IngressServer:
    config = ParleyConfig.model_validate(
        {"server": {"port": free_port(), "state_dir": str(tmp_path), **sections.pop("server", {})}, **sections}
    )
    ingress = IngressServer(config, cast(Services, None))
    await ingress.start()
    return ingress


@pytest.fixture
async def guarded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[IngressServer]:
    monkeypatch.setenv("PARLEY_AUTH_SECRET", SECRET)
    ingress = await server(tmp_path, auth={"mode": "token"})
    yield ingress
    await ingress.stop()


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        (None, "needs an invitation link"),
        ("not.a.jwt", "not valid for this Parley"),
        (mint(b"another-servers-secret-also-long-enough", "mallory", 3600), "not valid for this Parley"),
        (mint(SECRET.encode(), "alice", 60, now=time.time() - 3600), "has expired"),
    ],
    ids=["no-token", "garbage", "foreign-secret", "expired"],
)
async def test_a_connection_without_a_valid_invitation_is_refused_with_its_reason(
    guarded: IngressServer, token: str | None, reason: str
) -> None:
    client = ParleyClient(guarded.url, token=token)
    try:
        refused = await client.connect(media=False)
        assert reason in refused["reason"], refused
        assert not client.of("welcome")
    finally:
        await client.close()


async def test_a_good_invitation_gets_in_under_its_name(guarded: IngressServer) -> None:
    client = ParleyClient(guarded.url, token=mint(SECRET.encode(), "alice", 3600))
    try:
        welcome = await client.connect(media=False)
        assert welcome["user"] == "alice" and welcome["session_id"] and welcome["session_key"]
    finally:
        await client.close()


async def test_a_foreign_host_header_is_refused(tmp_path: Path) -> None:
    ingress = await server(tmp_path)
    try:
        async with aiohttp.ClientSession() as http:
            for host, status in (("evil.example", 421), (f"127.0.0.1:{ingress.config.server.port}", 200)):
                async with http.get(ingress.url + "socket.io/?EIO=4&transport=polling", headers={"Host": host}) as reply:
                    assert reply.status == status, (host, await reply.text())
    finally:
        await ingress.stop()


async def test_a_session_id_alone_reads_nothing_and_kicks_no_one(tmp_path: Path) -> None:
    ingress = await server(tmp_path)
    victim, thief = ParleyClient(ingress.url), None
    try:
        await victim.connect(media=False)
        ingress.sessions[victim.session_id or ""].conversation.add(Entry(role="user", text="my secret plans"))
        thief = ParleyClient(ingress.url, session_id=victim.session_id)  # knows the id, not the key
        welcome = await thief.connect(media=False)
        assert welcome["session_id"] != victim.session_id and welcome["history"] == []
        assert victim.sio.connected, "the owner was not disconnected"
        again = ParleyClient(ingress.url, session_id=victim.session_id, session_key=victim.session_key)
        await victim.close()
        owner = await again.connect(media=False)  # the owner, with its key, gets it back
        assert [m["text"] for m in owner["history"]] == ["my secret plans"]
        await again.close()
    finally:
        await victim.close()
        if thief is not None:
            await thief.close()
        await ingress.stop()


async def test_one_address_cannot_take_every_connection(tmp_path: Path) -> None:
    ingress = await server(tmp_path, limits={"sockets_per_address": 3}, server={"max_sessions": 10})
    clients = [ParleyClient(ingress.url) for _ in range(4)]
    try:
        answers = [await c.connect(media=False) for c in clients]
        assert all("session_id" in a for a in answers[:3])
        assert "Too many connections from your network address" in answers[3]["reason"]
    finally:
        for c in clients:
            await c.close()
        await ingress.stop()


async def test_one_user_cannot_hold_every_conversation(tmp_path: Path) -> None:
    ingress = await server(tmp_path, limits={"sessions_per_user": 2})
    clients = [ParleyClient(ingress.url) for _ in range(3)]
    try:
        answers = [await c.connect(media=False) for c in clients]
        assert all("session_id" in a for a in answers[:2])
        assert "already have 2 conversations" in answers[2]["reason"]
    finally:
        for c in clients:
            await c.close()
        await ingress.stop()


def test_the_operator_mints_an_invitation_link_the_server_accepts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import subprocess
    import sys

    from parley.ingress.auth import check_token
    from tests.support import ROOT

    env = {"PARLEY_AUTH_SECRET": SECRET, "PATH": "/usr/bin:/bin"}
    args = ["--name", "bob", "--ttl", "2h", "--url", "https://parley.example:8443/"]
    done = subprocess.run(
        [sys.executable, "-m", "parley.tools.token", *args], cwd=ROOT, capture_output=True, text=True, timeout=60, env=env
    )
    assert done.returncode == 0, done.stderr
    link = done.stdout.strip()
    assert link.startswith("https://parley.example:8443/#token=")
    assert check_token(SECRET.encode(), link.split("#token=", 1)[1]) == "bob"
    missing = subprocess.run(
        [sys.executable, "-m", "parley.tools.token", "--name", "bob", "--server-state-dir", str(tmp_path / "none")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert missing.returncode == 1 and "PARLEY_AUTH_SECRET" in missing.stderr


def test_allowed_hosts_may_name_a_whole_domain() -> None:
    from parley.ingress.auth import host_allowed, host_of

    allowed = {"parley.example.com", "*.nodes.example.com"}
    assert host_allowed(host_of("node-1.nodes.example.com:8443"), allowed)
    assert host_allowed(host_of("PARLEY.example.com"), allowed)
    assert not host_allowed(host_of("evil.example"), allowed)
    assert not host_allowed(host_of("nodes.example.com.evil.example"), allowed)
    assert host_of("[::1]:8443") == "::1" and host_of("10.0.0.5:8443") == "10.0.0.5"
