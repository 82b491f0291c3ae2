"""A two-node Ray cluster on one machine: node 1 here, node 2 in a network namespace of its own.

Used by tests/test_two_nodes.py. Each node needs its own IP so that both ingress replicas can bind
the same server port: this process's namespace gets one end of a veth pair (10.213.0.1), a named
namespace gets the other (10.213.0.2), and `ray start` runs once in each. Needs root, and should
run where nothing else is on the network (scripts/test.sh's `unshare --net` namespace).

Invariants: every namespace, link and process made here is removed by `close()`, also after a
failure half-way; processes are found by the ids this module started (their process groups),
by the namespace they live in, or by the temp dir only this cluster uses, never by a name
(`ray stop` would kill every Ray on the machine, the test session's own included). Namespace and
temp dir names carry the owner's pid, so a run killed before its cleanup is cleaned up by the
next one (`reap_stale`).

`python -m tests.support.netns deploy ADDRESS CONFIG_JSON` deploys the app on the cluster at ADDRESS in a
fresh driver process (the caller's own Ray state stays untouched) and prints one JSON line: the
URL, the ingress replicas' node IPs and the deploy time. `python -m tests.support.netns shutdown ADDRESS` shuts Serve down there.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.support import ROOT
from tests.support.network import free_port

HEAD_IP = "10.213.0.1"
NODE2_IP = "10.213.0.2"
PREFIX = 24


CLUSTER_SECRET = "two-node-test-secret-long-enough-for-hs256"
"""What the two nodes sign and check invitations with (Parley asks for them off loopback)."""


def ray_env() -> dict[str, str]:
    """The environment of every Ray process of this cluster: Parley importable, no stray address,
    and token authentication off (Ray 2.60 turns it on for `ray start` when ~/.ray/auth_token
    exists, and then refuses clients that have no token)."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env["RAY_AUTH_MODE"] = "disabled"
    env["PARLEY_AUTH_SECRET"] = CLUSTER_SECRET  # one invitation secret for both nodes, as cluster.env gives a real one
    return env


def run(
    *cmd: str, timeout: float = 20.0, check: bool = True, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=check, env=env)


def reachable(host: str) -> bool:
    """True when host's kernel answers a TCP connect to a closed port (a refusal needs a route)."""
    with socket.socket() as s:
        s.settimeout(1)
        try:
            s.connect((host, 9))
        except ConnectionRefusedError:
            return True
        except OSError:
            time.sleep(0.2)
            return False
        return True


NETNS_PREFIX = "parley-n2-"
TEMP_PREFIX = "prl2n-"  # short: Ray's unix socket paths live under the temp dir


def _pids_with(text: bytes) -> set[int]:
    """Processes (other than this one) whose command line contains text."""
    pids = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            with contextlib.suppress(OSError):
                if text in (entry / "cmdline").read_bytes():
                    pids.add(int(entry.name))
    return pids


def _kill(pids: set[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def reap_stale() -> list[str]:
    """Remove what a run killed before its cleanup left behind: node-2 namespaces and Ray temp dirs
    named by this module (they carry the owner's pid) whose owner is gone, with their processes."""
    removed = []
    for name in run("ip", "netns", "list", check=False).stdout.split():
        owner = name.removeprefix(NETNS_PREFIX)
        if name.startswith(NETNS_PREFIX) and owner.isdigit() and not Path(f"/proc/{owner}").exists():
            _kill({int(p) for p in run("ip", "netns", "pids", name, check=False).stdout.split()}, signal.SIGKILL)
            run("ip", "netns", "del", name, check=False)
            removed.append(name)
    for path in Path(tempfile.gettempdir()).glob(f"{TEMP_PREFIX}*"):
        owner = path.name.removeprefix(TEMP_PREFIX).split("-")[0]
        if owner.isdigit() and not Path(f"/proc/{owner}").exists():
            _kill(_pids_with(str(path).encode()), signal.SIGKILL)
            shutil.rmtree(path, ignore_errors=True)
            removed.append(str(path))
    return removed


class TwoNodeCluster:
    """Start with `open()`, stop with `close()` (idempotent, safe after a partial `open()`)."""

    def __init__(self) -> None:
        tag = str(os.getpid())
        self.netns = f"{NETNS_PREFIX}{tag}"
        self.veth_here, self.veth_there = f"pv{tag}a", f"pv{tag}b"
        self.temp_dir = tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{tag}-")
        self.port = 0
        self.procs: list[subprocess.Popen[bytes]] = []
        self._netns_made = False
        self._veth_made = False
        self._last_status = ""

    @property
    def address(self) -> str:
        return f"{HEAD_IP}:{self.port}"

    # -- network --------------------------------------------------------------------------

    def make_network(self) -> None:
        reap_stale()
        run("ip", "netns", "add", self.netns)
        self._netns_made = True
        run("ip", "link", "add", self.veth_here, "type", "veth", "peer", "name", self.veth_there, "netns", self.netns)
        self._veth_made = True
        run("ip", "addr", "add", f"{HEAD_IP}/{PREFIX}", "dev", self.veth_here)
        run("ip", "link", "set", self.veth_here, "up")
        there = ("ip", "netns", "exec", self.netns)
        run(*there, "ip", "link", "set", "lo", "up")
        run(*there, "ip", "addr", "add", f"{NODE2_IP}/{PREFIX}", "dev", self.veth_there)
        run(*there, "ip", "link", "set", self.veth_there, "up")
        # bounded wait until node 2 answers on the veth (links take a moment to come up)
        deadline = time.monotonic() + 10
        while not reachable(NODE2_IP):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{NODE2_IP} is unreachable over {self.veth_here}")

    # -- Ray ------------------------------------------------------------------------------

    def _ray(self, *args: str, netns: bool = False) -> subprocess.Popen[bytes]:
        ray = str(Path(sys.executable).parent / "ray")
        cmd = [ray, "start", "--block", "--disable-usage-stats", f"--temp-dir={self.temp_dir}", "--num-cpus=1"]
        cmd += ["--object-store-memory=150000000", *args]
        if netns:
            cmd = ["ip", "netns", "exec", self.netns, *cmd]
        env = ray_env()
        log = open(Path(self.temp_dir) / f"ray-start-{len(self.procs)}.log", "wb")
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT, start_new_session=True)
        log.close()
        self.procs.append(proc)
        return proc

    def start_ray(self, timeout: float = 90.0) -> None:
        self.port = free_port(HEAD_IP)
        self._ray("--head", f"--node-ip-address={HEAD_IP}", f"--port={self.port}", "--include-dashboard=false")
        self._wait(lambda: self.alive_nodes() >= 1, timeout, "the head node")
        self._ray(f"--address={self.address}", f"--node-ip-address={NODE2_IP}", netns=True)
        self._wait(lambda: self.alive_nodes() >= 2, timeout, "node 2 to join")

    def alive_nodes(self) -> int:
        """Alive nodes, asked of the GCS in a separate process (no ray.init in this one)."""
        for proc in self.procs:
            if proc.poll() is not None:
                raise RuntimeError(f"`ray start` exited ({proc.returncode}); see {self.temp_dir}\n{self.logs()}")
        code = (
            "import sys; from ray._raylet import GcsClient; "
            "nodes = GcsClient(address=sys.argv[1]).get_all_node_info(timeout=5).values(); "
            "print(sum(1 for n in nodes if n.state == 0))"
        )
        try:
            out = run(sys.executable, "-c", code, self.address, check=False, timeout=30, env=ray_env())
            self._last_status = out.stderr[-2000:]
        except subprocess.TimeoutExpired:
            return 0
        with contextlib.suppress(ValueError):
            return int(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 else 0
        return 0

    def _wait(self, ready: Any, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}\n{self._last_status}\n{self.logs()}")
            time.sleep(1)

    def logs(self, tail: int = 3000) -> str:
        out = []
        for path in sorted(Path(self.temp_dir).glob("ray-start-*.log")):
            out.append(f"--- {path.name}\n{path.read_text(errors='replace')[-tail:]}")
        return "\n".join(out)

    def free_server_port(self, tries: int = 20) -> int:
        """A TCP port free on all addresses in both nodes' namespaces (each ingress binds 0.0.0.0)."""
        check = "import socket, sys; socket.socket().bind(('0.0.0.0', int(sys.argv[1])))"
        for _ in range(tries):
            port = free_port("0.0.0.0")
            if run("ip", "netns", "exec", self.netns, sys.executable, "-c", check, str(port), check=False).returncode == 0:
                return port
        raise RuntimeError(f"found no TCP port free on both nodes in {tries} tries")

    def driver(self, *args: str, timeout: float) -> str:
        """Run `python -m tests.support.netns ARGS` (a separate Ray driver); returns its last stdout line."""
        proc = subprocess.run(
            [sys.executable, "-m", "tests.support.netns", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=ray_env(),
            cwd=ROOT,
            check=False,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"driver {args[0]} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
        return proc.stdout.strip().splitlines()[-1]

    # -- teardown -------------------------------------------------------------------------

    def _our_pids(self) -> set[int]:
        """Processes of this cluster: in node 2's namespace, or with our temp dir on their command line."""
        pids: set[int] = set()
        if self._netns_made:
            with contextlib.suppress(Exception):
                pids |= {int(p) for p in run("ip", "netns", "pids", self.netns, check=False).stdout.split()}
        pids |= _pids_with(self.temp_dir.encode())
        return pids

    def stop_ray(self, grace_s: float = 3.0) -> None:
        """SIGTERM, then SIGKILL what is left after grace_s: Serve has been shut down by then, and
        gcs_server and `ray start --block` outlast a SIGTERM by far more than 20 s here."""
        for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 10.0)):
            for proc in self.procs:  # `ray start --block` runs each node's processes in its own group
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, sig)
            _kill(self._our_pids(), sig)
            deadline = time.monotonic() + wait_s
            while time.monotonic() < deadline:
                for proc in self.procs:
                    proc.poll()  # reap the `ray start` processes, or they linger as zombies
                if not self._our_pids():
                    return
                time.sleep(0.25)

    def close(self) -> None:
        try:
            self.stop_ray()
        finally:
            if self._veth_made:
                run("ip", "link", "del", self.veth_here, check=False)  # deletes its peer too
            if self._netns_made:
                run("ip", "netns", "del", self.netns, check=False)
            shutil.rmtree(self.temp_dir, ignore_errors=True)

    def leftovers(self) -> list[str]:
        """What close() should have removed and did not (empty when clean)."""
        left = []
        if self.netns in run("ip", "netns", "list", check=False).stdout.split():
            left.append(f"netns {self.netns}")
        if run("ip", "link", "show", self.veth_here, check=False).returncode == 0:
            left.append(f"link {self.veth_here}")
        left += [f"pid {p}" for p in self._our_pids()]
        return left


# -- drivers (run as separate processes) ----------------------------------------------------


def _deploy(address: str, config_json: str) -> None:
    import ray

    from parley.config import ParleyConfig
    from serve_app import start

    data = json.loads(config_json)
    data["serve"] = {**data.get("serve", {}), "address": address}
    began = time.monotonic()
    url = start(ParleyConfig.model_validate(data))
    deploy_s = time.monotonic() - began
    # the GCS's actor table (the state API needs the dashboard, which this cluster runs without)
    ingress = [
        actor["Address"]["IPAddress"]
        for actor in ray._private.state.actors().values()
        if actor["State"] == "ALIVE"
        and "Ingress" in actor.get("ActorClassName", "")
        and "Replica" in actor.get("ActorClassName", "")
    ]
    print(json.dumps({"url": url, "ingress_node_ips": sorted(ingress), "deploy_s": deploy_s}), flush=True)


def _shutdown(address: str) -> None:
    import ray
    from ray import serve

    ray.init(address=address)
    serve.shutdown()
    print(json.dumps({"shutdown": True}), flush=True)


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    if sys.argv[1] == "deploy":
        _deploy(sys.argv[2], sys.argv[3])
    elif sys.argv[1] == "shutdown":
        _shutdown(sys.argv[2])
    else:
        raise SystemExit(f"unknown command {sys.argv[1]!r}")
