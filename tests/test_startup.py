"""Start-up failures said in one or two plain lines: the stage, the cause, the log to read.

Serve and the replicas are faked here by the text they leave behind (status messages shaped like
Ray 2.60's, worker logs shaped like Ray's): each cause a user can hit gets its own plain reason.
tests/test_run_script.py checks the same end to end with a real Ray and scripts/run.sh.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

import pytest

from parley.tools.startup import StartupError, StartupFailure, explain, replica_log, wait_until_running
from tests.support.clock import FakeClock

SERVE_PREFIX = (
    "The deployment failed to start 1 times in a row. This may be due to a problem with its constructor or initial "
    "health check failing. See controller logs for details. Error:\n"
)


def python_error(last_line: str) -> str:
    """Serve's message for a constructor that raised: its traceback wrapped in a RuntimeError."""
    return SERVE_PREFIX + (
        "ray::ServeReplica:parley:LLM.initialize_and_get_metadata() (pid=10837, ip=192.0.2.2)\n"
        '  File ".../ray/serve/_private/replica.py", line 1928, in initialize\n'
        "    raise RuntimeError(traceback.format_exc()) from None\n"
        "RuntimeError: Traceback (most recent call last):\n"
        '  File "/work/main/deployments/llm.py", line 124, in __init__\n'
        "    self.model_path = local_model_path(config)\n"
        f"{last_line}\n"
    )


DIED = SERVE_PREFIX + "ActorDiedError()"
RAY_WORKER_HEAD = ":job_id:01000000\n:actor_name:ServeReplica:parley:LLM\n"


def crash_log(signal_line: str) -> str:
    return RAY_WORKER_HEAD + "parley.llm INFO loading model.gguf\n" + signal_line + "\nPC: @ 0x7f0b0ef26f36 (unknown)\n"


def test_a_missing_model_file_names_the_file() -> None:
    reason = explain(python_error("deployments.llm.LLMError: could not load the local model /models/x.gguf: no such file"))
    assert reason == "a file it needs is missing: /models/x.gguf."
    reason = explain(python_error("FileNotFoundError: [Errno 2] No such file or directory: '/opt/whisper/model.bin'"))
    assert reason == "a file it needs is missing: /opt/whisper/model.bin."


@pytest.mark.parametrize(
    ("log", "signal", "words"),
    [
        (crash_log("*** SIGSEGV received at time=1795674339 on cpu 1 ***"), "SIGSEGV", "segmentation fault"),
        (crash_log("*** SIGILL received at time=1795674339 on cpu 0 ***"), "SIGILL", "instruction this CPU does not have"),
        (RAY_WORKER_HEAD + "Fatal Python error: Aborted\n\nThread 0x0001 (most recent call first):\n", "SIGABRT", "abort"),
    ],
)
def test_a_native_crash_names_its_signal(log: str, signal: str, words: str) -> None:
    reason = explain(DIED, log)
    assert reason.startswith(f"it crashed with {signal} (") and words in reason


def test_a_dead_process_without_its_log_is_not_blamed_on_a_guess() -> None:
    # Ray's own text for a dead worker lists SIGSEGV and the OOM killer as *possible* causes
    ray_text = (
        "ActorDiedError: The actor died unexpectedly. Some common causes include: (1) the process was killed by the "
        "OOM killer due to high memory usage, (2) ray stop --force was called, or (3) the worker crashed due to SIGSEGV"
    )
    reason = explain(DIED + "\n" + ray_text)
    assert "died without a Python error" in reason and "SIGSEGV" not in reason


@pytest.mark.parametrize(
    "text",
    [
        "ray.exceptions.OutOfMemoryError: Task was killed due to the node running low on memory.",
        "MemoryError",
        "RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB",
        "ValueError: llama_model_load: failed to allocate buffer of size 2147483648",
    ],
)
def test_out_of_memory(text: str) -> None:
    assert explain(python_error(text)).startswith("it ran out of memory")


def test_a_port_in_use_names_the_port() -> None:
    error = "OSError: [Errno 98] error while attempting to bind on address ('0.0.0.0', 8443): address already in use"
    assert explain(python_error(error)) == "port 8443 is already in use (is another Parley running?). Choose another with --port."


def test_resources_this_machine_does_not_have() -> None:
    message = (
        "Deployment 'ASR' in application 'parley' has 1 replicas that have taken more than 30s to be scheduled. "
        'Resources required for each replica: {"CPU": 0.5, "GPU": 1.0}, total resources available: {"CPU": 1.25}.'
    )
    assert explain(message) == 'its replica needs {"CPU": 0.5, "GPU": 1.0} and cannot be placed; the cluster has {"CPU": 1.25}.'


def test_any_other_error_is_given_as_its_last_line() -> None:
    reason = explain(python_error("ValueError: unknown voice 'bob'; voices: heart, bella"))
    assert reason == "ValueError: unknown voice 'bob'; voices: heart, bella"


def test_the_report_is_the_stage_and_the_reason_then_the_log() -> None:
    failure = StartupFailure(stage="LLM", reason="it crashed with SIGSEGV (a segmentation fault in native code).", log="/x.err")
    assert failure.lines() == [
        "parley: the LLM (language model) could not start: it crashed with SIGSEGV (a segmentation fault in native code).",
        "parley: details in /x.err",
    ]


def test_the_replica_log_is_found_by_the_actor_name_ray_writes_at_its_top(tmp_path: Path) -> None:
    (tmp_path / "worker-aa-01000000-1.err").write_text(":job_id:01000000\n:actor_name:ServeReplica:parley:TTS\n")
    llm = tmp_path / "worker-bb-ffffffff-2.err"
    llm.write_text(crash_log("*** SIGSEGV received at time=1 on cpu 1 ***"))
    (tmp_path / "worker-cc-01000000-3.err").write_text("no actor here\n")
    assert replica_log(str(tmp_path), "parley", "LLM") == str(llm)
    assert replica_log(str(tmp_path), "parley", "ASR") is None


# -- wait_until_running, with Serve's status faked -------------------------------------------------


class Status(StrEnum):
    HEALTHY = "HEALTHY"
    UPDATING = "UPDATING"
    DEPLOY_FAILED = "DEPLOY_FAILED"
    RUNNING = "RUNNING"
    DEPLOYING = "DEPLOYING"


@dataclass
class Dep:
    status: Status
    message: str = ""


@dataclass
class App:
    status: Status
    deployments: dict[str, Dep]
    message: str = ""


@dataclass
class Serve:
    """serve.status() replayed from a script of snapshots, one per poll."""

    script: list[dict[str, App]]
    polls: int = 0
    clock: FakeClock = field(default_factory=FakeClock)
    printed: list[str] = field(default_factory=list)

    def status(self) -> object:
        snapshot = self.script[min(self.polls, len(self.script) - 1)]
        self.polls += 1
        return type("S", (), {"applications": snapshot})()

    def sleep(self, seconds: float) -> None:
        self.clock.advance(seconds)


def deploying(**deps: Dep) -> dict[str, App]:
    return {"parley": App(Status.DEPLOYING, deps)}


def wait(serve: Serve, logs_dir: str | None = None, *, local: bool = True) -> None:
    wait_until_running(
        "parley",
        status=serve.status,
        logs_dir=logs_dir,
        local=local,
        capacity=lambda: {"CPU": 2.0, "memory": 1e10},
        progress=serve.printed.append,
        clock=serve.clock,
        sleep=serve.sleep,
        poll_s=1.0,
    )


def test_each_stage_is_reported_ready_as_it_comes_up() -> None:
    up, loading = Dep(Status.HEALTHY), Dep(Status.UPDATING)
    serve = Serve(
        [
            deploying(ASR=loading, LLM=loading, TTS=loading, Ingress=loading),
            deploying(ASR=up, LLM=loading, TTS=up, Ingress=loading),
            deploying(ASR=up, LLM=up, TTS=up, Ingress=loading),
            {"parley": App(Status.RUNNING, {"ASR": up, "LLM": up, "TTS": up, "Ingress": up})},
        ]
    )
    wait(serve)
    assert serve.printed == [
        "parley: ASR ready (1.0 s)",
        "parley: TTS ready (1.0 s)",
        "parley: LLM ready (2.0 s)",
        "parley: ingress ready (3.0 s)",
    ]


def test_a_stage_that_cannot_start_stops_the_wait_with_its_reason_and_log(tmp_path: Path) -> None:
    log = tmp_path / "worker-bb-ffffffff-2.err"
    log.write_text(crash_log("*** SIGSEGV received at time=1 on cpu 1 ***"))
    failed = {"parley": App(Status.DEPLOY_FAILED, {"LLM": Dep(Status.DEPLOY_FAILED, DIED), "TTS": Dep(Status.HEALTHY)})}
    serve = Serve([deploying(LLM=Dep(Status.UPDATING)), failed])
    with pytest.raises(StartupError) as caught:
        wait(serve, str(tmp_path))
    assert caught.value.lines() == [
        "parley: the LLM (language model) could not start: it crashed with SIGSEGV (a segmentation fault in native code).",
        f"parley: details in {log}",
    ]


def test_a_port_in_use_fails_the_ingress() -> None:
    error = "OSError: [Errno 98] error while attempting to bind on address ('127.0.0.1', 8080): address already in use"
    serve = Serve([{"parley": App(Status.DEPLOY_FAILED, {"Ingress": Dep(Status.DEPLOY_FAILED, python_error(error))})}])
    with pytest.raises(StartupError) as caught:
        wait(serve)
    assert caught.value.failures == [
        StartupFailure(
            stage="ingress", reason="port 8080 is already in use (is another Parley running?). Choose another with --port."
        )
    ]


def test_an_unplaceable_replica_fails_a_local_start_but_is_waited_for_on_a_cluster() -> None:
    message = (
        "Deployment 'ASR' in application 'parley' has 1 replicas that have taken more than 30s to be scheduled. "
        'Resources required for each replica: {"GPU": 1.0}, total resources available: {"CPU": 2.0}.'
    )
    stuck = deploying(ASR=Dep(Status.UPDATING, message))
    with pytest.raises(StartupError) as caught:
        wait(Serve([stuck]))
    assert caught.value.failures[0].stage == "ASR" and '{"GPU": 1.0}' in caught.value.failures[0].reason

    cluster = Serve([stuck] * 40 + [{"parley": App(Status.RUNNING, {"ASR": Dep(Status.HEALTHY)})}])
    wait(cluster, local=False)
    assert any("waiting for resources" in line for line in cluster.printed)


def test_a_replica_that_is_only_slow_to_start_on_a_busy_machine_is_waited_for() -> None:
    # Serve warns "taken more than 30s to be scheduled" also when the resources are there and the
    # worker process is merely slow to come up
    message = (
        "Deployment 'LLM' in application 'parley' has 1 replicas that have taken more than 30s to be scheduled. "
        'Resources required for each replica: {"CPU": 0.5}, total resources available: {"CPU": 0.5}.'
    )
    serve = Serve(
        [deploying(LLM=Dep(Status.UPDATING, message))] * 60 + [{"parley": App(Status.RUNNING, {"LLM": Dep(Status.HEALTHY)})}]
    )
    wait(serve)
    assert serve.printed == ["parley: LLM ready (60.0 s)"]
