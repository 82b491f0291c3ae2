"""Starting the app and saying, in one or two plain lines, why it could not start.

Invariants:
- `explain` is pure: from the text Serve and a replica's log left behind it returns one reason a
  user can act on (a missing file, a crash with its signal, out of memory, a port in use, missing
  resources, else the error itself). It never raises and needs no Ray.
- `wait_until_running` is the one place that watches a deploy: it reports each stage as it comes
  up and, when one cannot start, raises `StartupError` naming the stage (ASR, LLM, TTS or ingress),
  the reason, and the replica's log file when it is on this machine.
"""

from __future__ import annotations

import glob
import json
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

STAGES = {"ASR": "ASR", "LLM": "LLM", "TTS": "TTS", "Ingress": "ingress"}
"""Serve deployment name -> the stage name users see."""

WHAT = {
    "ASR": "speech recognition",
    "LLM": "language model",
    "TTS": "speech synthesis",
    "ingress": "web server",
}

_SIGNALS = {
    "SIGSEGV": "a segmentation fault in native code",
    "SIGILL": "an illegal instruction: the native code uses an instruction this CPU does not have",
    "SIGBUS": "a bus error in native code",
    "SIGABRT": "an abort in native code",
    "SIGFPE": "an arithmetic fault in native code",
    "SIGKILL": "SIGKILL (often the kernel's out-of-memory killer)",
}
_FAULTHANDLER = {
    "Segmentation fault": "SIGSEGV",
    "Illegal instruction": "SIGILL",
    "Bus error": "SIGBUS",
    "Aborted": "SIGABRT",
    "Floating-point exception": "SIGFPE",
    "Floating point exception": "SIGFPE",
}
_OOM = re.compile(
    r"running low on memory|out of memory|OutOfMemoryError|\bMemoryError\b|Cannot allocate memory|std::bad_alloc|"
    r"failed to allocate|\bOOM\b",
    re.IGNORECASE,
)
_PORT_IN_USE = re.compile(r"address already in use|\[Errno 98\]", re.I)
_BIND_ADDRESS = re.compile(r"bind on address \('[^']*', (\d+)\)")
_MISSING = [
    re.compile(r"No such file or directory: '([^']+)'"),
    re.compile(r"could not load the local model (\S+?):"),
    re.compile(r"(?:model|file|path)[^\n]*?(?:does not exist|not found)[^\n]*?'?(/[^\s':]+)", re.I),
]
_ERROR_LINE = re.compile(r"^\s*(?:[\w.]+\.)?(\w*(?:Error|Exception)): (.+)$", re.M)
_UNSCHEDULABLE = re.compile(r"Resources required for each replica: (\{[^}]*\})(?:, total resources available: (\{[^}]*\}))?")


@dataclass(frozen=True)
class StartupFailure:
    """One stage that could not start."""

    stage: str
    """ASR, LLM, TTS or ingress."""
    reason: str
    log: str | None = None
    """The replica's log on this machine, when known."""

    def lines(self) -> list[str]:
        """What the user reads: the stage and why, then where the details are."""
        first = f"parley: the {self.stage} ({WHAT.get(self.stage, 'service')}) could not start: {self.reason}"
        where = self.log or "the Ray logs (`ray logs`, or the dashboard)"
        return [first, f"parley: details in {where}"]


class StartupError(RuntimeError):
    """The app did not start; `failures` says which stages and why."""

    def __init__(self, failures: list[StartupFailure]) -> None:
        self.failures = failures
        super().__init__("; ".join(f"{f.stage}: {f.reason}" for f in failures))

    def lines(self) -> list[str]:
        return [line for failure in self.failures for line in failure.lines()]


def explain(message: str, log_text: str = "") -> str:
    """Why a replica could not start, from Serve's status message and the replica's own log.

    A crash is looked for first: Ray's message for a dead worker also names SIGSEGV and the OOM
    killer as *possible* causes, so those words there prove nothing; the log's signal line does.
    """
    text = f"{message}\n{log_text}"
    if signal := _signal(log_text):
        return f"it crashed with {signal} ({_SIGNALS.get(signal, 'a fatal signal')})."
    if match := _UNSCHEDULABLE.search(text):
        have = f"; the cluster has {match.group(2)}" if match.group(2) else ""
        return f"its replica needs {match.group(1)} and cannot be placed{have}."
    if _PORT_IN_USE.search(text):
        where = f"port {match.group(1)} is" if (match := _BIND_ADDRESS.search(text)) else "its port is"
        return f"{where} already in use (is another Parley running?). Choose another with --port."
    if ("ActorDiedError" not in message and _OOM.search(text)) or "running low on memory" in text:
        return "it ran out of memory. Free memory, or give it a smaller model."
    raised = "\n".join(m.group(0) for m in _ERROR_LINE.finditer(text))  # not the source lines a traceback quotes
    for pattern in _MISSING:
        if match := pattern.search(raised):
            return f"a file it needs is missing: {match.group(1)}."
    if "ActorDiedError" in message:
        return "its process died without a Python error (a native crash, or the kernel's out-of-memory killer: see dmesg)."
    errors = [(k, d) for k, d in _ERROR_LINE.findall(f"{message}\n{log_text}") if k not in ("RuntimeError", "RayTaskError")]
    if errors:
        kind, detail = errors[-1]
        return f"{kind}: {detail.strip()[:300]}"
    first = next((line.strip() for line in message.splitlines() if line.strip()), "no reason given")
    return first[:300]


def _signal(log_text: str) -> str | None:
    if match := re.search(r"\*\*\* (SIG[A-Z]+) received", log_text):
        return match.group(1)
    if match := re.search(r"Fatal Python error: ([A-Za-z -]+)", log_text):
        return _FAULTHANDLER.get(match.group(1).strip())
    return None


def replica_log(logs_dir: str, app: str, deployment: str) -> str | None:
    """The newest worker stderr file of a replica of `deployment` (Ray heads it with the actor name)."""
    marker = f":actor_name:ServeReplica:{app}:{deployment}\n"
    found: list[tuple[float, str]] = []
    for path in glob.glob(os.path.join(logs_dir, "worker-*.err")):
        try:
            with open(path, errors="replace") as f:
                head = f.read(256)
            if marker in head:
                found.append((os.path.getmtime(path), path))
        except OSError:
            continue
    return max(found)[1] if found else None


def _tail(path: str | None, limit: int = 64_000) -> str:
    if path is None:
        return ""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.path.getsize(path) - limit))
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def failure_of(deployment: str, message: str, *, app: str, logs_dir: str | None) -> StartupFailure:
    """Diagnose one deployment from its Serve status message and its replica's log (if local)."""
    log = replica_log(logs_dir, app, deployment) if logs_dir else None
    return StartupFailure(stage=STAGES.get(deployment, deployment), reason=explain(message, _tail(log)), log=log)


def beyond(message: str, capacity: dict[str, float]) -> bool:
    """True when Serve's "taken more than 30s to be scheduled" message asks for more of some
    resource than the whole cluster has. (Serve says the same of a replica whose worker is just
    slow to start on a busy machine; only a request above the total can never be placed.)"""
    match = _UNSCHEDULABLE.search(message)
    if not match:
        return False
    try:
        needed = json.loads(match.group(1))
    except ValueError:
        return False
    return any(float(amount) > capacity.get(resource, 0.0) for resource, amount in needed.items())


def wait_until_running(
    app: str,
    *,
    status: Callable[[], Any],
    logs_dir: str | None,
    local: bool,
    capacity: Callable[[], dict[str, float]] = dict,
    progress: Callable[[str], None] = lambda _: None,
    timeout_s: float = 900.0,
    poll_s: float = 0.25,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Poll Serve's status until `app` runs; raise StartupError when a stage cannot start.

    `status` is `serve.status` and `capacity` is `ray.cluster_resources`. On a local Ray (`local`)
    a replica that asks for more than the machine has (a GPU on a laptop) fails the start; on a
    cluster it is reported and waited for, since the autoscaler may be adding a node.
    """
    began = clock()
    ready: set[str] = set()
    warned: set[str] = set()
    while True:
        application = status().applications.get(app)
        deployments = dict(application.deployments) if application else {}
        for name, dep in deployments.items():
            if str(dep.status.value) == "HEALTHY" and name not in ready:
                ready.add(name)
                progress(f"parley: {STAGES.get(name, name)} ready ({clock() - began:.1f} s)")
        if application is not None and str(application.status.value) == "RUNNING":
            return
        failed = [
            failure_of(name, dep.message, app=app, logs_dir=logs_dir)
            for name, dep in deployments.items()
            if str(dep.status.value) in ("DEPLOY_FAILED", "UNHEALTHY")
        ]
        if application is not None and str(application.status.value) == "DEPLOY_FAILED" and not failed:
            failed = [StartupFailure(stage="app", reason=explain(application.message))]
        if failed:
            raise StartupError(failed)
        waited = clock() - began
        for name, dep in deployments.items():
            if name in warned or "to be scheduled" not in dep.message or not beyond(dep.message, capacity()):
                continue
            if local:
                raise StartupError([failure_of(name, dep.message, app=app, logs_dir=None)])
            warned.add(name)
            progress(f"parley: {STAGES.get(name, name)} is waiting for resources: {explain(dep.message)}")
        if waited > timeout_s:
            slow = [STAGES.get(str(n), str(n)) for n in deployments if n not in ready] or ["app"]
            raise StartupError([StartupFailure(stage=s, reason=f"not ready after {timeout_s:.0f} s.") for s in slow])
        sleep(poll_s)
