"""TURN stays true: a page that may only relay, through Debian's coturn, holds a conversation.

The ingress here is configured as docs/cluster.md says a cluster behind TURN is: `webrtc.ice_servers`
names the TURN server, and the secret shared with it (coturn's use-auth-secret) is in the environment
variable `webrtc.relay_secret_env` names, so every session gets short-lived credentials of its own
(`parley.ingress.ice.relay_credentials`). The page's RTCPeerConnection is forced to
`iceTransportPolicy: 'relay'` (an init script), so it gathers no host or reflexive candidate: if
the credentials, the URL or the relay were wrong, it could not connect at all. What proves the media
went through coturn: the page's selected candidate pair has a relay candidate of coturn's relay range
as its local end and carries the call's bytes, and coturn's log shows the page's credentials
allocating, being given permission to the server's address, and (once the page closes its
connection) having relayed at least the bytes that pair counted, both ways.

Runs only in a network namespace whose only interface is loopback (scripts/test.sh makes one).
"""

from __future__ import annotations

import asyncio
import re
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.chromium import launched, opened, write_fake_media
from tests.support.network import loopback_only
from tests.support.turn import TURNSERVER, Coturn, running_coturn

pytestmark = [
    pytest.mark.browser,
    pytest.mark.serve,
    pytest.mark.skipif(not shutil.which("chromium"), reason="Debian chromium is not installed"),
    pytest.mark.skipif(TURNSERVER is None, reason="coturn's turnserver is not installed (scripts/install.sh --dev)"),
    pytest.mark.skipif(not loopback_only(), reason="needs a loopback-only network namespace (run scripts/test.sh as root)"),
]

SECRET_ENV = "PARLEY_TEST_TURN_SECRET"
"""`webrtc.relay_secret_env` of the relayed ingress: set in its replica's environment only."""

RELAY_ONLY_JS = """(() => {
    const Native = window.RTCPeerConnection;
    class RelayOnly extends Native {
        constructor(config, ...rest) { super({ ...(config || {}), iceTransportPolicy: "relay" }, ...rest); }
        setConfiguration(config) { return super.setConfiguration({ ...(config || {}), iceTransportPolicy: "relay" }); }
    }
    window.RTCPeerConnection = RelayOnly;
})();"""
"""Whatever configuration the page builds its peer connection with, it may use relayed candidates only."""

CONNECTED = "window.parley && window.parley.pc && window.parley.status === 'ready'"
"""The page says Ready: welcomed, WebRTC connected and Parley's audio arriving (talking is allowed)."""

PATH_JS = """async () => {
    const stats = await window.parley.pc.getStats();
    const byId = new Map();
    stats.forEach((r) => byId.set(r.id, r));
    let pair = null, energy = 0;
    const gathered = [];
    stats.forEach((r) => {
        if (r.type === "transport" && r.selectedCandidatePairId) pair = byId.get(r.selectedCandidatePairId);
        if (r.type === "local-candidate") gathered.push(r.candidateType);
        if (r.type === "inbound-rtp" && r.kind === "audio") energy += r.totalAudioEnergy || 0;
    });
    if (!pair) return null;
    const local = byId.get(pair.localCandidateId), remote = byId.get(pair.remoteCandidateId);
    const config = window.parley.pc.getConfiguration();
    return {
        policy: config.iceTransportPolicy,
        servers: config.iceServers.map((s) => ({ urls: [].concat(s.urls), username: s.username || null })),
        local: { type: local.candidateType, address: local.address, port: local.port, protocol: local.relayProtocol },
        remote: { type: remote.candidateType, address: remote.address, port: remote.port },
        state: pair.state, bytesSent: pair.bytesSent, bytesReceived: pair.bytesReceived, gathered, energy,
    };
}"""
"""The page's connection as getStats sees it: its configuration, the selected candidate pair (both
ends, its state and bytes), the types of every local candidate gathered, and the energy of the audio
received."""


@pytest.fixture(scope="module")
def fake_media(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, float]:
    return write_fake_media(tmp_path_factory.mktemp("media"))


@pytest.fixture(scope="module")
def coturn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Coturn]:
    with running_coturn(tmp_path_factory.mktemp("coturn"), secrets.token_hex(16)) as turn:
        yield turn


@pytest.fixture(scope="module")
def relayed_app(serve_app, coturn: Coturn) -> Iterator[str]:
    """A second ingress on loopback whose ICE servers are `coturn`, with the shared secret in its
    replica's environment, calling the session app's own ASR, LLM and TTS."""
    from ray import serve

    from deployments.ingress import Ingress
    from parley.config import ParleyConfig
    from tests.support.network import free_port

    config = ParleyConfig.model_validate(
        {
            "server": {
                "host": "127.0.0.1",
                "port": free_port(),
                "store": "memory",
            },
            "webrtc": {
                "ice_addresses": ["127.0.0.1"],
                "ice_servers": [{"urls": [coturn.url]}],
                "relay_secret_env": SECRET_ENV,
                "relay_ttl_s": 600,
            },
            "limits": {"turns_per_minute": 200},
        }
    )
    handles = [serve.get_deployment_handle(name, app_name="parley") for name in ("ASR", "LLM", "TTS")]
    options = {"num_cpus": 0, "runtime_env": {"env_vars": {SECRET_ENV: coturn.secret}}}  # merged with the job's
    ingress = serve.deployment(name="Ingress", ray_actor_options=options)(Ingress)
    url = serve.run(ingress.bind(config, *handles), name="parley-turn", route_prefix=None).url.remote().result()
    try:
        yield url
    finally:
        serve.delete("parley-turn")


async def path(page: Any) -> dict[str, Any]:
    found = await page.evaluate(PATH_JS)
    assert found, "the page has no selected candidate pair"
    return dict(found)


async def test_a_relay_only_page_holds_a_typed_and_a_spoken_turn_through_coturn(
    relayed_app: str, coturn: Coturn, fake_media: tuple[Path, Path, float]
) -> None:
    from playwright.async_api import expect

    wav, y4m, period = fake_media
    async with (
        launched(wav, y4m) as chromium,
        opened(chromium, relayed_app, ready=CONNECTED, init_script=RELAY_ONLY_JS, bypass_csp=True) as page,
    ):
        # The page was given coturn with credentials of its own, and may use nothing but relays.
        start = await path(page)
        assert start["policy"] == "relay", start
        assert start["servers"] == [{"urls": [coturn.url], "username": start["servers"][0]["username"]}], start
        username = start["servers"][0]["username"] or ""
        assert re.fullmatch(r"\d+:\S+", username), f"not a TURN REST username (expiry:user): {username!r}"
        assert set(start["gathered"]) == {"relay"}, start

        # The call runs on coturn's relay: the selected pair's local end is an allocation of its range.
        assert start["state"] == "succeeded", start
        local, remote = start["local"], start["remote"]
        assert local["type"] == "relay" and local["protocol"] == "udp", start
        assert local["address"] == "127.0.0.1" and local["port"] in coturn.relay_ports, start

        # A typed turn (its latency line arrives once its speech has all played: talking over it would interrupt it).
        await page.fill("#text-input", "What is the capital of Italy?")
        await page.press("#text-input", "Enter")
        typed = page.locator('#chat [data-role="assistant"]').first
        await expect(typed).to_have_attribute("data-state", "done", timeout=90000)
        assert (await typed.locator(".text").text_content() or "").strip()
        await typed.locator(".metrics").wait_for(timeout=60000)

        # A spoken push-to-talk turn: Space held through one loop of the fake microphone's question.
        before = await path(page)
        asked = await page.locator('#chat [data-role="user"]').count()
        await page.evaluate("document.activeElement && document.activeElement.blur()")  # Space in the text box types
        await page.keyboard.down("Space")
        await asyncio.sleep(period + 0.6)
        await page.keyboard.up("Space")
        heard = page.locator('#chat [data-role="user"] .text').nth(asked)
        await expect(heard).to_contain_text("capital", ignore_case=True, timeout=30000)
        words = (await heard.text_content() or "").lower()
        assert "france" in words, words
        spoken = page.locator('#chat [data-role="assistant"]').nth(1)
        await expect(spoken).to_have_attribute("data-state", "done", timeout=90000)
        assert (await spoken.locator(".text").text_content() or "").strip()
        await spoken.locator(".metrics").wait_for(timeout=60000)  # its speech has all been played
        after = await path(page)
        assert after["energy"] - before["energy"] > 0.001, (before, after)  # Parley's voice was heard, through the relay

        # Still the same relayed pair, and it carried the question up and the answer down.
        assert (after["local"], after["remote"]) == (local, remote), (start, after)
        assert after["bytesSent"] - before["bytesSent"] > 20_000, (before, after)
        assert after["bytesReceived"] - before["bytesReceived"] > 5_000, (before, after)
        # Closing the connection releases its allocation, and coturn logs what that allocation relayed.
        await page.evaluate("window.parley.pc.close()")

    # coturn checked the page's credentials against the shared secret, let them send to the
    # server's end of the selected pair, and relayed at least the bytes that pair carried.
    assert coturn.sessions(username), coturn.log()[-3000:]
    assert coturn.succeeded(username, "ALLOCATE") >= 1
    assert coturn.succeeded(username, "CREATE_PERMISSION") + coturn.succeeded(username, "CHANNEL_BIND") >= 1
    assert remote["address"] in coturn.peers(username), (remote, coturn.peers(username))
    for _ in range(100):
        received, sent = coturn.relayed(username)
        if received >= after["bytesReceived"] and sent >= after["bytesSent"]:
            break
        await asyncio.sleep(0.1)
    assert received >= after["bytesReceived"] and sent >= after["bytesSent"], ((received, sent), after)
