"""ASR autoscaling with the options build_app applies: a burst of recordings adds replicas, quiet
removes them; a replica that fits on no node makes Ray's autoscaler add one.

The ASR deployment runs as its own Serve app next to the session's "parley" app, so scaling it
never disturbs the other tests; it is deleted at the end. Nodes are added by Ray's fake multi-node
provider (raylets started on this machine, no docker) in a Ray of their own, inside a network and
PID namespace so that its port 6379 and its `ray stop` touch nothing else on the machine.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from ray import serve

from parley.config import ParleyConfig
from serve_app import asr_deployment
from tests.support import ROOT
from tests.support.speech import speak

pytestmark = pytest.mark.serve

log = logging.getLogger(__name__)

APP = "asr-autoscale"
CALLERS = 6
MAX_CALLS = 400
LOAD_LIMIT_S = 20.0
SCALE_DOWN_LIMIT_S = 25.0
FAKE_CLUSTER_LIMIT_S = 120


def running_replicas() -> int:
    states = serve.status().applications[APP].deployments["ASR"].replica_states
    return sum(count for state, count in states.items() if state == "RUNNING")


async def poll_replicas(done: Callable[[int], bool], deadline_s: float) -> int | None:
    """Poll the running replica count until `done(count)` holds; the count, or None past the deadline."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        count = await asyncio.to_thread(running_replicas)
        if done(count):
            return count
        await asyncio.sleep(0.25)
    return None


async def test_asr_scales_up_under_load_and_back_down_when_quiet(serve_app) -> None:
    config = ParleyConfig.model_validate(
        {
            "asr": {"cpu_threads": 1},
            "serve": {
                "asr": {
                    "min_replicas": 1,
                    "max_replicas": 3,
                    "target_ongoing_requests": 1,
                    "upscale_delay_s": 1,
                    "downscale_delay_s": 2,
                    "cpus": 0.1,  # the session's app already holds most of this machine's CPUs
                },
            },
        }
    )
    clip = speak("Please open the window.", rate=16000)
    handle = serve.run(asr_deployment(config).bind(config.asr), name=APP, route_prefix=None)
    stop = asyncio.Event()
    calls = 0

    async def caller() -> None:
        nonlocal calls
        while not stop.is_set() and calls < MAX_CALLS:
            transcript = await handle.transcribe.remote(clip)
            assert "window" in transcript.text.lower(), transcript.text
            calls += 1

    try:
        assert await asyncio.to_thread(running_replicas) == 1
        began = time.monotonic()
        callers = [asyncio.create_task(caller()) for _ in range(CALLERS)]
        try:
            peak = await poll_replicas(lambda n: n >= 2 or all(c.done() for c in callers), LOAD_LIMIT_S)
            scaled_up_s = time.monotonic() - began
        finally:
            stop.set()
            await asyncio.gather(*callers)
        assert peak is not None and peak >= 2, f"still {peak} replica(s) after {LOAD_LIMIT_S:g} s and {calls} calls"

        quiet = time.monotonic()
        settled = await poll_replicas(lambda n: n == 1, SCALE_DOWN_LIMIT_S)
        assert settled == 1, f"did not scale back to one replica within {SCALE_DOWN_LIMIT_S:g} s"
        log.warning(
            "ASR autoscaling: %d replicas %.1f s into the load (%d calls done); back to 1 replica %.1f s after it stopped",
            peak,
            scaled_up_s,
            calls,
            time.monotonic() - quiet,
        )
    finally:
        serve.delete(APP)


def fake_cluster_config() -> dict:
    """A fake_multinode autoscaler config: a 1-CPU head and up to two 1-CPU worker nodes."""
    commands = ["initialization_commands", "setup_commands", "head_setup_commands", "worker_setup_commands"]
    commands += ["head_start_ray_commands", "worker_start_ray_commands", "cluster_synced_files", "rsync_exclude", "rsync_filter"]
    no_commands: dict = {key: [] for key in commands}
    return {
        "cluster_name": "parley-fake",
        "max_workers": 2,
        "provider": {
            "type": "fake_multinode",
            "use_node_id_as_ip": True,
            "disable_node_updaters": True,
            "disable_launch_config_check": True,
        },
        "available_node_types": {
            "ray.head.default": {"resources": {"CPU": 1}, "node_config": {}, "max_workers": 0},
            "ray.worker.cpu": {
                "resources": {"CPU": 1, "object_store_memory": 200_000_000},
                "node_config": {},
                "min_workers": 0,
                "max_workers": 2,
            },
        },
        "head_node_type": "ray.head.default",
        "auth": {},
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": 0.1,
        "docker": {},
        "file_mounts": {},
        "file_mounts_sync_continuously": False,
        **no_commands,
    }


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"), reason="needs root for its own network and PID namespace")
def test_a_pending_asr_replica_gets_a_new_node() -> None:
    """Two 1-CPU ASR replicas on a 1-CPU head: the second waits until the autoscaler adds a node."""
    workdir = Path(tempfile.mkdtemp(prefix="parley-fake-", dir="/tmp"))  # short: Ray's socket paths must fit
    try:
        (workdir / "cluster.json").write_text(json.dumps(fake_cluster_config()))
        ray_cli = Path(sys.executable).parent / "ray"
        script = (
            "ip link set lo up"
            f" && {ray_cli} start --head --num-cpus=1 --include-dashboard=false"
            f" --autoscaling-config={workdir / 'cluster.json'} --temp-dir={workdir / 'ray'} >/dev/null"
            f" && {sys.executable} -m tests.test_autoscaling"
        )
        env = {**os.environ, "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1", "PYTHONPATH": str(ROOT)}
        # When the namespace's first process exits (or is killed with unshare on a timeout), the
        # kernel ends every Ray process started in it.
        done = subprocess.run(
            ["unshare", "--net", "--pid", "--fork", "--kill-child", "--mount-proc", "bash", "-c", script],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=FAKE_CLUSTER_LIMIT_S,
        )
        lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
        assert done.returncode == 0 and lines, f"exit {done.returncode}: {done.stdout[-2000:]} {done.stderr[-3000:]}"
        seen = json.loads(lines[-1])
        log.warning("fake multi-node cluster: %s", seen)
        assert seen["node_added_s"] is not None, "no node was added for the pending replica"
        assert seen["running"] == 2, "both replicas ran once the node was up"
        assert seen["node_removed_s"] is not None, "the idle node was not removed after the app was deleted"
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _fake_cluster_driver() -> None:
    """Run inside the fake cluster's namespace: deploy, watch nodes come and go, print one JSON line."""
    import ray

    ray.init(address="auto", runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})

    def alive_nodes() -> int:
        return sum(1 for node in ray.nodes() if node["Alive"])

    began = time.monotonic()
    added: list[float] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.wait(0.25):
            if not added and alive_nodes() > 1:
                added.append(time.monotonic() - began)

    config = ParleyConfig.model_validate(
        {"asr": {"cpu_threads": 1}, "serve": {"asr": {"min_replicas": 2, "max_replicas": 2, "cpus": 1}}}
    )
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    serve.start(proxy_location="Disabled")
    serve.run(asr_deployment(config).bind(config.asr), name=APP, route_prefix=None)  # returns once both run
    running_s = time.monotonic() - began
    states = serve.status().applications[APP].deployments["ASR"].replica_states
    running = sum(count for state, count in states.items() if state == "RUNNING")
    stop.set()
    watcher.join()

    serve.delete(APP)
    deleted = time.monotonic()
    removed_s = None
    while time.monotonic() - deleted < 60:
        if alive_nodes() == 1:
            removed_s = time.monotonic() - deleted
            break
        time.sleep(0.5)
    seen = {"node_added_s": added[0] if added else None, "running_s": running_s, "running": running}
    print(json.dumps({**seen, "node_removed_s": removed_s}), flush=True)


if __name__ == "__main__":
    _fake_cluster_driver()
