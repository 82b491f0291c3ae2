"""A two-node Ray cluster on this machine serves a client through each node's ingress.

Node 1 runs in the test's own (loopback-only) namespace on one end of a veth pair, node 2 in a
network namespace of its own on the other end (tests/support/netns.py), so each node's ingress binds the
same server port on its own address. The app is deployed from a separate driver process, so this
test neither needs nor disturbs the session's own Ray (the `serve_app` fixture).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from parley.ingress.ice import configure_ice
from parley.ingress.tls import self_signed_pair
from tests.support.client import ParleyClient
from tests.support.netns import HEAD_IP, NODE2_IP, TwoNodeCluster
from tests.support.network import loopback_only

pytestmark = [
    pytest.mark.serve,
    pytest.mark.skipif(not sys.platform.startswith("linux") or os.geteuid() != 0, reason="needs root (network namespaces)"),
    pytest.mark.skipif(not loopback_only(), reason="needs a loopback-only network namespace (scripts/test.sh)"),
    pytest.mark.skipif(shutil.which("ip") is None, reason="needs iproute2's `ip`"),
]

NODE_IPS = [HEAD_IP, NODE2_IP]


@dataclass
class Deployed:
    port: int
    ingress_node_ips: list[str]
    timings: dict[str, float] = field(default_factory=dict)

    def url(self, ip: str) -> str:
        return f"https://{ip}:{self.port}/"


def invitation() -> str:
    """An invitation both nodes accept: off loopback Parley asks for one."""
    from parley.ingress.auth import mint
    from tests.support.netns import CLUSTER_SECRET

    return mint(CLUSTER_SECRET.encode(), "two-node-tester", 3600)


@pytest.fixture(scope="module")
def two_nodes() -> Iterator[Deployed]:
    cluster = TwoNodeCluster()
    tls_dir = tempfile.mkdtemp(prefix="parley-tls-")
    began = time.monotonic()
    try:
        cluster.make_network()
        cluster.start_ray(timeout=120)
        cluster_up = time.monotonic() - began
        # made here once: two ingress replicas creating the same self-signed pair at once would race
        self_signed_pair(Path(tls_dir), "0.0.0.0")
        port = cluster.free_server_port()
        config = {
            "server": {"host": "0.0.0.0", "port": port, "self_signed_dir": tls_dir},
            # ice_addresses empty: each node advertises its own veth address
            "webrtc": {"ice_addresses": []},
            "serve": {
                "include_dashboard": False,
                "ingress": {"nodes": 2, "cpus": 0.1},
                **{part: {"cpus": 0.1} for part in ("asr", "llm", "tts")},
            },
            "limits": {"turns_per_minute": 200},
            "llm": {"max_tokens": 40},
        }
        result = json.loads(cluster.driver("deploy", cluster.address, json.dumps(config), timeout=300))
        deployed = Deployed(port=port, ingress_node_ips=result["ingress_node_ips"])
        deployed.timings.update(cluster_up_s=cluster_up, deploy_s=result["deploy_s"])
        yield deployed
        print(f"\ntwo-node timings: {json.dumps({k: round(v, 2) for k, v in deployed.timings.items()})}")
    finally:
        stopping = time.monotonic()
        try:
            if cluster.port:
                cluster.driver("shutdown", cluster.address, timeout=60)
        except Exception as exc:  # the processes are killed below anyway
            print(f"serve shutdown on the two-node cluster failed: {exc}")
        finally:
            cluster.close()
            shutil.rmtree(tls_dir, ignore_errors=True)
            print(f"two-node teardown: {time.monotonic() - stopping:.1f} s")
        assert not cluster.leftovers(), f"left behind: {cluster.leftovers()}"


def test_each_node_runs_one_ingress(two_nodes: Deployed) -> None:
    assert two_nodes.ingress_node_ips == NODE_IPS


@pytest.mark.parametrize("ip", NODE_IPS)
async def test_a_typed_turn_through_each_nodes_ingress(two_nodes: Deployed, ip: str) -> None:
    client = ParleyClient(two_nodes.url(ip), ssl_verify=False, token=invitation())
    try:
        began = time.monotonic()
        welcome = await client.connect(media=False)
        assert "session_id" in welcome, welcome
        await client.sio.emit("text", {"text": "Say hello to Bob."})
        done = await client.wait_for(
            lambda: [m for m in client.messages("assistant") if m["state"] in ("done", "error")], timeout=90
        )
        assert done[0]["state"] == "done", done
        assert done[0]["text"].strip()
        two_nodes.timings[f"typed_turn_{ip}_s"] = time.monotonic() - began
    finally:
        await client.close()


@pytest.mark.parametrize("ip", NODE_IPS)
async def test_a_spoken_answer_over_webrtc_from_each_node(two_nodes: Deployed, ip: str) -> None:
    # the client is on node 1's side of the veth: advertise the address both nodes can reach
    client = ParleyClient(two_nodes.url(ip), ssl_verify=False, ice_addresses=[HEAD_IP], token=invitation())
    try:
        began = time.monotonic()
        await client.connect()
        connected = time.monotonic()
        await client.sio.emit("text", {"text": "Say hello to Carol."})
        done = await client.wait_for(
            lambda: [m for m in client.messages("assistant") if m["state"] in ("done", "error")], timeout=90
        )
        assert done[0]["state"] == "done", done
        await client.wait_for(lambda: client.heard.loud_frames() > 10, timeout=60)
        two_nodes.timings[f"webrtc_connect_{ip}_s"] = connected - began
        two_nodes.timings[f"spoken_turn_{ip}_s"] = time.monotonic() - connected
    finally:
        await client.close()
        configure_ice(["127.0.0.1"], None)  # process-wide: back to what the other tests' clients use
