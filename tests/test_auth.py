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
from parley.engine.messages import Entry
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


# -- behind a proxy: who is connecting ---------------------------------------------------------------


def _environ(peer: str, forwarded: str | None = None, **headers: str) -> dict[str, Any]:
    """What python-engineio's aiohttp driver gives a connect handler: the request (its peer) and the headers."""
    from types import SimpleNamespace

    environ: dict[str, Any] = {"aiohttp.request": SimpleNamespace(remote=peer), "REMOTE_ADDR": peer, **headers}
    if forwarded is not None:
        environ["HTTP_X_FORWARDED_FOR"] = forwarded
    return environ


@pytest.mark.parametrize(
    ("peer", "forwarded", "address"),
    [
        ("127.0.0.1", "203.0.113.7", "203.0.113.7"),
        ("127.0.0.1", "198.51.100.1, 203.0.113.7", "203.0.113.7"),  # the left one is whatever the browser claimed
        ("127.0.0.1", "203.0.113.7, 127.0.0.1", "203.0.113.7"),  # a chain of trusted proxies is walked back
        ("::1", "2001:db8::7", "2001:db8::7"),
        ("127.0.0.1", "[2001:db8::7]:41000", "2001:db8::7"),
        ("127.0.0.1", "203.0.113.7:41000", "203.0.113.7"),
        ("10.1.2.3", "203.0.113.7", "203.0.113.7"),  # trusted by network
        ("192.0.2.50", "203.0.113.7", "192.0.2.50"),  # not a proxy of ours: its header is the browser's own claim
        ("127.0.0.1", "unknown", "127.0.0.1"),
        ("127.0.0.1", "203.0.113.7, not-an-address", "127.0.0.1"),
        ("127.0.0.1", "", "127.0.0.1"),
        ("127.0.0.1", None, "127.0.0.1"),
        ("::ffff:127.0.0.1", "203.0.113.7", "203.0.113.7"),  # a dual-stack socket's view of 127.0.0.1
    ],
)
def test_behind_a_trusted_proxy_the_address_is_the_forwarded_one(peer: str, forwarded: str | None, address: str) -> None:
    from parley.ingress.auth import Gate

    config = ParleyConfig.model_validate({"auth": {"trusted_proxies": ["127.0.0.1", "::1", "10.0.0.0/8"]}})
    assert Gate(config).user(_environ(peer, forwarded), None).address == address


def test_in_proxy_mode_the_forwarded_address_counts_too(monkeypatch: pytest.MonkeyPatch) -> None:
    from parley.ingress.auth import Gate, Refused

    monkeypatch.setenv("PARLEY_AUTH_SECRET", SECRET)
    gate = Gate(ParleyConfig.model_validate({"auth": {"mode": "proxy"}, "server": {"state_dir": None}}))
    user = gate.user(_environ("127.0.0.1", "203.0.113.7", HTTP_X_FORWARDED_USER="alice"), None)
    assert (user.name, user.address) == ("alice", "203.0.113.7")
    with pytest.raises(Refused, match="sign-in proxy"):
        gate.user(_environ("203.0.113.9", "127.0.0.1", HTTP_X_FORWARDED_USER="alice"), None)


async def test_behind_a_proxy_each_browser_has_its_own_connection_cap(tmp_path: Path) -> None:
    """Through a proxy on the same machine every socket comes from 127.0.0.1: the cap counts the forwarded address."""
    import socketio

    ingress = await server(tmp_path, limits={"sockets_per_address": 1})
    clients: list[socketio.AsyncClient] = []

    async def connect(forwarded: str) -> str:
        client = socketio.AsyncClient(reconnection=False)
        clients.append(client)
        try:
            await client.connect(ingress.url, transports=["websocket"], headers={"X-Forwarded-For": forwarded})
        except socketio.exceptions.ConnectionError as exc:
            return f"refused: {exc}"
        return "connected"

    try:
        assert await connect("203.0.113.1") == "connected"
        assert await connect("203.0.113.2") == "connected", "another browser behind the same proxy"
        assert (await connect("203.0.113.1")).startswith("refused"), "the same browser's second socket"
    finally:
        for client in clients:
            await client.disconnect()
        await ingress.stop()


# -- auth: auto ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("server_section", "mode", "why"),
    [
        ({}, "open", "loopback"),
        ({"allowed_hosts": ["localhost", "127.0.0.1", "[::1]"]}, "open", "loopback"),
        ({"allowed_hosts": ["parley.example.com", "localhost"]}, "token", "parley.example.com"),
        ({"allowed_hosts": ["*.example.com"]}, "token", "*.example.com"),
        ({"host": "::1", "allowed_hosts": ["10.0.0.5"]}, "token", "10.0.0.5"),
        ({"host": "0.0.0.0"}, "token", "0.0.0.0"),
        ({"host": "192.0.2.10"}, "token", "192.0.2.10"),
    ],
)
def test_auto_is_open_only_on_loopback_reached_by_loopback_names(server_section: dict[str, Any], mode: str, why: str) -> None:
    from parley.ingress.auth import auth_mode, auth_reason

    config = ParleyConfig.model_validate({"server": server_section})
    assert auth_mode(config) == mode
    assert why in auth_reason(config)


def test_a_loopback_server_answers_to_loopback_names_only_by_default() -> None:
    from parley.ingress.auth import allowed_hosts

    assert allowed_hosts(ParleyConfig()) == {"localhost", "127.0.0.1", "::1"}
    assert allowed_hosts(ParleyConfig.model_validate({"server": {"host": "127.0.0.2"}})) == {
        "localhost",
        "127.0.0.1",
        "::1",
        "127.0.0.2",
    }
    public = ParleyConfig.model_validate({"webrtc": {"public_address": "198.51.100.4"}})
    assert allowed_hosts(public) == {"localhost", "127.0.0.1", "::1"}, "a loopback server is not reached by a public address"


def test_an_explicit_mode_is_kept() -> None:
    from parley.ingress.auth import auth_mode

    config = ParleyConfig.model_validate({"auth": {"mode": "open"}, "server": {"allowed_hosts": ["parley.example.com"]}})
    assert auth_mode(config) == "open"


async def test_a_loopback_server_behind_a_proxy_asks_for_invitations(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """nginx on the same machine proxies parley.example.com to 127.0.0.1: the public reaches it, so auto means token."""
    monkeypatch.setenv("PARLEY_AUTH_SECRET", SECRET)
    port = free_port()
    ingress = await server(tmp_path, server={"port": port, "allowed_hosts": ["parley.example.com", "127.0.0.1"]})
    anonymous, invited = ParleyClient(ingress.url), ParleyClient(ingress.url, token=mint(SECRET.encode(), "alice", 3600))
    try:
        assert "needs an invitation link" in (await anonymous.connect(media=False))["reason"]
        assert (await invited.connect(media=False))["user"] == "alice"
    finally:
        await anonymous.close()
        await invited.close()
        await ingress.stop()


# -- token lifetime and revocation ---------------------------------------------------------------------


def _claims(token: str) -> dict[str, Any]:
    import jwt

    claims: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    return claims


def test_every_invitation_has_an_id_and_a_bounded_lifetime() -> None:
    from parley.ingress.auth import Refused, check_token

    a, b = mint(SECRET.encode(), "alice", 3600), mint(SECRET.encode(), "alice", 3600)
    assert _claims(a)["jti"] and _claims(a)["jti"] != _claims(b)["jti"]
    assert _claims(a)["exp"] - _claims(a)["iat"] == 3600
    with pytest.raises(ValueError, match="longer than"):
        mint(SECRET.encode(), "alice", 31 * 86400)
    forever = mint(SECRET.encode(), "alice", 400 * 86400, max_ttl_s=10**9)
    with pytest.raises(Refused, match="valid for longer"):
        check_token(SECRET.encode(), forever)
    assert check_token(SECRET.encode(), forever, max_ttl_s=10**9) == "alice"
    with pytest.raises(Refused, match="valid for longer"):
        check_token(SECRET.encode(), a, max_ttl_s=60)


@pytest.mark.parametrize("missing", ["iat", "exp"])
def test_an_invitation_without_its_lifetime_is_refused(missing: str) -> None:
    import jwt

    from parley.ingress.auth import AUDIENCE, ISSUER, Refused, check_token

    now = int(time.time())
    claims = {"sub": "alice", "iat": now, "exp": now + 60, "aud": AUDIENCE, "iss": ISSUER, "jti": "x1"}
    del claims[missing]
    with pytest.raises(Refused, match="not valid"):
        check_token(SECRET.encode(), jwt.encode(claims, SECRET.encode(), algorithm="HS256"))


def _token_gate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **auth: Any) -> Any:
    from parley.ingress.auth import Gate

    monkeypatch.setenv("PARLEY_AUTH_SECRET", SECRET)
    config = ParleyConfig.model_validate({"server": {"state_dir": str(tmp_path)}, "auth": {"mode": "token", **auth}})
    return Gate(config)


def test_a_revoked_invitation_is_refused_and_closes_open_sockets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from parley.ingress.auth import Refused, revoke

    gate = _token_gate(tmp_path, monkeypatch)
    token, other = mint(SECRET.encode(), "alice", 3600), mint(SECRET.encode(), "bob", 3600)
    alice, bob = gate.user(_environ("127.0.0.1"), {"token": token}), gate.user(_environ("127.0.0.1"), {"token": other})
    assert alice.token_id == _claims(token)["jti"] and alice.expires == _claims(token)["exp"]
    assert gate.still_valid(alice) is None and gate.still_valid(bob) is None
    revoke(gate.config, alice.token_id or "")
    assert "withdrawn" in (gate.still_valid(alice) or ""), "the next check sees the file changed"
    assert gate.still_valid(bob) is None
    with pytest.raises(Refused, match="withdrawn"):
        gate.user(_environ("127.0.0.1"), {"token": token})
    revoke(gate.config, bob.token_id or "")  # a second line, written within the same clock tick as the first
    assert "withdrawn" in (gate.still_valid(bob) or "")
    assert (tmp_path / "revoked-tokens").read_text().split() == [alice.token_id, bob.token_id]


def test_an_invitation_revoked_in_the_config_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from parley.ingress.auth import Refused, new_token_id

    withdrawn = new_token_id()
    gate = _token_gate(tmp_path, monkeypatch, revoked_tokens=[withdrawn])
    with pytest.raises(Refused, match="withdrawn"):
        gate.user(_environ("127.0.0.1"), {"token": mint(SECRET.encode(), "alice", 3600, token_id=withdrawn)})
    assert gate.user(_environ("127.0.0.1"), {"token": mint(SECRET.encode(), "alice", 3600)}).name == "alice"


def test_an_expired_invitation_closes_its_open_sockets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from parley.ingress.auth import User

    gate = _token_gate(tmp_path, monkeypatch)
    assert "expired" in (gate.still_valid(User("alice", "127.0.0.1", "id-1", time.time() - 1)) or "")
    assert gate.still_valid(User("alice", "127.0.0.1", "id-1", time.time() + 60)) is None
    assert gate.still_valid(User("anonymous", "127.0.0.1")) is None, "no invitation: nothing to withdraw"


def _token_cli(*args: str, env: dict[str, str] | None = None) -> Any:
    import subprocess
    import sys

    from tests.support import ROOT

    return subprocess.run(
        [sys.executable, "-m", "parley.tools.token", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", **(env or {})},
    )


def test_the_operator_sees_the_invitations_id_and_withdraws_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env = {"PARLEY_AUTH_SECRET": SECRET}
    state = ("--server-state-dir", str(tmp_path))
    made = _token_cli("--name", "carol", "--ttl", "7d", "--url", "https://parley.example:8443/", *state, env=env)
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip().split("#token=", 1)[1]
    token_id = _claims(token)["jti"]
    assert token_id in made.stderr and "--revoke" in made.stderr
    gate = _token_gate(tmp_path, monkeypatch)
    carol = gate.user(_environ("127.0.0.1"), {"token": token})
    assert gate.still_valid(carol) is None
    withdrawn = _token_cli("--revoke", token_id, *state, env=env)
    assert withdrawn.returncode == 0, withdrawn.stderr
    assert "withdrawn" in (gate.still_valid(carol) or "")
    too_long = _token_cli("--name", "carol", "--ttl", "60d", *state, env=env)
    assert too_long.returncode == 1 and "auth.max_token_ttl_s" in too_long.stderr
    longer = _token_cli("--name", "carol", "--ttl", "60d", "--auth-max-token-ttl-s", str(90 * 86400), *state, env=env)
    assert longer.returncode == 0, longer.stderr
    bad = _token_cli("--revoke", "not an id", *state, env=env)
    assert bad.returncode != 0 and "not an invitation id" in bad.stderr
