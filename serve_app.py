"""Parley's Ray Serve application: `build_app` for Serve configs, `python serve_app.py` to run it.

Invariants:
- the builder only wires deployments together from the typed config; models load in the
  replicas, never here.
- `python serve_app.py` prints Parley's own lines (its start-up, the `parley.*` loggers of every
  replica, why a stage could not start); Ray's own output (Serve's access logs and controller,
  worker stdout/stderr, tracebacks) stays in Ray's log files, whose folder the start-up names.
  `--verbose` prints everything, as Ray does by default.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ray import serve
from ray.serve import Application
from ray.serve.deployment import Deployment

from deployments.asr import ASR
from deployments.ingress import Ingress
from deployments.llm import LLM
from deployments.tts import TTS
from deployments.vision import Vision
from parley.config import DeploymentConfig, ParleyConfig, parse_args
from parley.ingress.web import is_loopback
from parley.policy import model_label, sight
from parley.tools.startup import StartupError, wait_until_running

ROOT = Path(__file__).resolve().parent


AUTOSCALING_METRICS_INTERVAL_S = 0.5
"""How often handles and ASR replicas report their ongoing requests to Serve's controller.

Ray 2.60 still reads this from the (deprecated) `metrics_interval_s` field; its default of 10 s
would make the autoscaler react tens of seconds late to a burst of recordings."""

AUTOSCALING_LOOK_BACK_S = 2.0
"""The window the reported ongoing requests are averaged over (Serve's default is 30 s)."""


INGRESS_MAX_ONGOING_REQUESTS = 32
"""Concurrent calls an ingress replica accepts (its own: the page's URL, its info; browsers reach it over HTTP)."""


def build_app(args: ParleyConfig | dict[str, Any]) -> Application:
    """The Serve application: ASR, LLM and TTS deployments (and, for a text-only LLM, Vision) behind
    `serve.ingress.per_node` ingress processes on each of `serve.ingress.nodes` nodes."""
    config = args if isinstance(args, ParleyConfig) else ParleyConfig.model_validate(args)
    ingress = config.serve.ingress
    llm = model_deployment(config, LLM, "LLM", config.serve.llm)
    tts = model_deployment(config, TTS, "TTS", config.serve.tts)
    front = _deployment(
        Ingress,
        name="Ingress",
        num_replicas=ingress.nodes * ingress.per_node,
        max_replicas_per_node=ingress.per_node,
        ray_actor_options={"num_cpus": ingress.cpus},
        **_common(config, INGRESS_MAX_ONGOING_REQUESTS),
    )
    vision = vision_deployment(config).bind(config.vision) if sight(config) == "note" else None
    asr = asr_deployment(config).bind(config.asr)
    return front.bind(config, asr, llm.bind(config.llm, config.prompt), tts.bind(config.tts), vision)


def vision_deployment(config: ParleyConfig) -> Deployment:
    """The vision deployment (scene notes for a text-only LLM), with `serve.vision`'s options."""
    # Serve's router never sends a replica more than max_ongoing_requests, so a batch can be no bigger
    return model_deployment(config, Vision, "Vision", config.serve.vision, batch_size=config.vision.batch_size)


def asr_deployment(config: ParleyConfig) -> Deployment:
    """The ASR deployment with `serve.asr`'s options: autoscaled when `max_replicas > min_replicas`."""
    return model_deployment(config, ASR, "ASR", config.serve.asr, batch_size=config.asr.batch_size)


def model_deployment(config: ParleyConfig, cls: type, name: str, res: DeploymentConfig, batch_size: int = 1) -> Deployment:
    """A model deployment with its section of `serve`: its CPUs, GPUs and accelerator, and a fixed
    number of replicas or Serve's autoscaling. A batched one (`batch_size`) accepts at least a batch."""
    actor: dict[str, Any] = {"num_cpus": res.cpus}
    if res.gpus:
        actor["num_gpus"] = res.gpus
    if res.accelerator_type:
        actor["accelerator_type"] = res.accelerator_type
    options = _common(config, max(res.max_ongoing_requests, batch_size))
    return _deployment(cls, name=name, ray_actor_options=actor, **_scaling(res), **options)


def _scaling(res: DeploymentConfig) -> dict[str, Any]:
    """A deployment's replicas: a fixed number, or Serve's autoscaling between `min_replicas` and
    `max_replicas` (with its delays and Parley's short metrics interval and look-back)."""
    if res.max_replicas <= res.min_replicas:
        return {"num_replicas": res.min_replicas}
    return {
        "autoscaling_config": {
            "min_replicas": res.min_replicas,
            "max_replicas": res.max_replicas,
            "target_ongoing_requests": res.target_ongoing_requests,
            "upscale_delay_s": res.upscale_delay_s,
            "downscale_delay_s": res.downscale_delay_s,
            "metrics_interval_s": AUTOSCALING_METRICS_INTERVAL_S,
            "look_back_period_s": AUTOSCALING_LOOK_BACK_S,
        }
    }


def _common(config: ParleyConfig, max_ongoing_requests: int) -> dict[str, Any]:
    res = config.serve
    return {
        "max_ongoing_requests": max_ongoing_requests,
        "health_check_period_s": res.health_check_period_s,
        "health_check_timeout_s": res.health_check_timeout_s,
        "max_constructor_retry_count": res.max_constructor_retry_count,
    }


def _deployment(cls: type, **options: Any) -> Deployment:
    return serve.deployment(**options)(cls)


def start(
    config: ParleyConfig,
    *,
    name: str = "parley",
    progress: Callable[[str], None] = lambda _: None,
    quiet: bool = False,
) -> str:
    """Start (or join) Ray, deploy the app and return the URL browsers open.

    `quiet` (the console of `python serve_app.py` without --verbose): of the workers' output only
    Parley's own log lines are printed, and Ray's driver logs only warnings; the rest is in Ray's
    log files, which a progress line names.

    Raises StartupError, naming the stage and the reason, when a deployment cannot start.
    """
    import ray

    runtime_env = {"env_vars": {"PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}}
    if not ray.is_initialized():
        console: dict[str, Any] = {}
        if quiet:
            # without the hook that filters forwarded lines, forward none: they are in the files anyway
            console = {"logging_level": logging.WARNING, "log_to_driver": _stdstream_dispatcher() is not None}
            logging.getLogger("ray._private.authentication.authentication_token_setup").addFilter(_not_token_auth_on)
        if config.serve.address:
            context = ray.init(address=config.serve.address, runtime_env=runtime_env, **console)
        else:
            context = ray.init(
                address="local",
                include_dashboard=config.serve.include_dashboard,
                runtime_env=runtime_env,
                _metrics_export_port=config.serve.metrics_export_port,
                **console,
            )
        if quiet:
            _print_only_parley_lines()
            logging.getLogger("ray.serve").setLevel(logging.WARNING)  # "Started Serve", its router: driver chatter
            progress(_where_ray_logs(context.dashboard_url))
    serve.start(proxy_location="Disabled")
    # Not serve.run: it blocks until the app runs or fails and says only "Failed to update the
    # deployments". Deploying without waiting lets wait_until_running report each stage as it
    # comes up and say why one could not start.
    serve._run(build_app(config), name=name, route_prefix=None, _blocking=False)
    wait_until_running(
        name,
        status=serve.status,
        logs_dir=_local_logs_dir(),
        local=not config.serve.address,
        capacity=ray.cluster_resources,
        progress=progress,
        timeout_s=config.serve.startup_timeout_s,
    )
    url: str = serve.get_app_handle(name).url.remote().result()
    return url


_PARLEY_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} parley(\.\w+)* [A-Z]+ ")
"""A line of Parley's own loggers in a replica (`parley.logs` formats them so)."""


def _not_token_auth_on(record: logging.LogRecord) -> bool:
    """Ray's notice, at every local start, that its token authentication is on (the default, and
    nothing to do). Its warning that authentication is *off* still prints."""
    return not record.getMessage().startswith("Token authentication is enabled")


def _stdstream_dispatcher() -> Any:
    """Ray's hook through which the driver prints what workers write (Ray 2.60; None if it moved)."""
    try:
        from ray._private.ray_logging import global_worker_stdstream_dispatcher
    except ImportError:
        return None
    return global_worker_stdstream_dispatcher if hasattr(global_worker_stdstream_dispatcher, "handlers") else None


def _print_only_parley_lines() -> None:
    """Of the worker output Ray forwards to this console, print only Parley's log lines, and the
    raylet's and autoscaler's notices (a worker killed for memory, a request that cannot be placed).
    Serve's access logs, its controller's lines, print() output and tracebacks stay in the files."""
    dispatcher = _stdstream_dispatcher()
    printers = [handler for label, handler in list(getattr(dispatcher, "handlers", [])) if label == "ray_print_logs"]
    if not printers:
        return
    print_lines = printers[0]

    def only_parley(batch: dict[str, Any]) -> None:
        lines = batch.get("lines") or []
        if batch.get("pid") not in ("raylet", "autoscaler"):
            lines = [line for line in lines if _PARLEY_LINE.match(line)]
        if lines:
            print_lines({**batch, "lines": lines})

    dispatcher.remove_handler("ray_print_logs")
    dispatcher.add_handler("ray_print_logs", only_parley)


def _where_ray_logs(dashboard_url: str | None) -> str:
    """The start-up line that says where the output no longer printed is."""
    logs = _local_logs_dir() or "this node's Ray session folder (/tmp/ray/session_latest/logs)"
    line = f"parley: Ray's logs (Serve's access logs, replica output, tracebacks): {logs} (--verbose prints them here too)"
    if dashboard_url:
        line += f"\nparley: Ray dashboard: http://{dashboard_url.removeprefix('http://')}"
    return line


def _local_logs_dir() -> str | None:
    """Where this node's Ray writes worker logs (replicas on other nodes log there, not here)."""
    from ray._private.worker import global_worker

    node = getattr(global_worker, "node", None)
    return node.get_logs_dir_path() if node is not None else None


def _progress(stop: threading.Event) -> None:
    began = time.monotonic()
    while not stop.wait(10):
        print(f"parley: still loading models ({time.monotonic() - began:.0f} s)...", flush=True)


def main(argv: list[str] | None = None) -> None:
    config = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    print("parley: starting Ray and deploying ASR, LLM, TTS and the ingress...", flush=True)
    done = threading.Event()
    threading.Thread(target=_progress, args=(done,), daemon=True).start()
    try:
        url = start(config, progress=lambda line: print(line, flush=True), quiet=not config.serve.verbose)
    except StartupError as exc:
        done.set()
        _shutdown(graceful=bool(config.serve.address))
        print("\n" + "\n".join(exc.lines()), file=sys.stderr, flush=True)
        sys.exit(1)
    except KeyboardInterrupt:
        _shutdown()
        sys.exit(130)
    finally:
        done.set()
    if config.llm.backend == "local":
        print(f"parley: the LLM is the embedded {model_label(config.llm)}; see README to point it at a real one.", flush=True)
    if line := vision_line(config):
        print(line, flush=True)
    print(access_line(config, url), flush=True)
    print(f"\nParley is ready: open {url}\n(Ctrl-C to stop)", flush=True)
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    try:
        while not stopping.wait(1):
            pass
    except KeyboardInterrupt:
        pass
    _shutdown()


def vision_line(config: ParleyConfig, app: str = "parley") -> str | None:
    """How a text-only LLM sees, said at start: the vision deployment's detectors, memory and time per
    frame, or what it lacks (None where the model gets frames itself, or nothing)."""
    if sight(config) != "note":
        return None
    try:
        info = serve.get_deployment_handle("Vision", app_name=app).info.remote().result(timeout_s=30)
    except Exception as exc:
        return f"parley: the vision deployment did not answer ({exc}); the model is told it cannot see."
    if not info.finds:
        return "parley: the model cannot see: " + "; ".join(info.missing.values())
    costs = ", ".join(f"{name} {ms:.0f} ms" for name, ms in info.ms_per_frame.items())
    lacks = f"; not installed: {', '.join(info.missing)}" if info.missing else ""
    return (
        f"parley: the model sees through detectors ({', '.join(info.finds)}{lacks}): their models take "
        f"{info.memory_mb:.0f} MB; a frame costs {costs}, once per turn."
    )


def access_line(config: ParleyConfig, url: str) -> str:
    """Who can get in, said at start: an open server off loopback is a choice to make knowingly."""
    from parley.ingress.auth import auth_mode, auth_reason, mint, signing_secret

    mode = auth_mode(config)
    where = f"{config.server.host}:{config.server.port}"
    if mode == "open":
        if is_loopback(config.server.host):
            return f"parley: open to anyone on this machine ({where} is loopback): no invitation needed."
        return f"parley: WARNING: open to anyone who can reach {where}, and so are its models and keys (--auth-mode open)."
    if mode == "proxy":
        proxies = ", ".join(config.auth.trusted_proxies)
        return f"parley: users are named by the {config.auth.proxy_user_header} header of your proxy ({proxies})."
    secret = signing_secret(config, create=False)
    line = (
        f"parley: browsers need an invitation link: python -m parley.tools.token --name NAME [--ttl 24h] ({auth_reason(config)})"
    )
    if secret is not None:
        ttl_s = min(24 * 3600, config.auth.max_token_ttl_s)
        token = mint(secret, "operator", ttl_s, max_ttl_s=ttl_s)
        line += f"\nparley: yours, for {ttl_s / 3600:g} h: {url.rstrip('/')}/#token={token}"
    return line


def _shutdown(graceful: bool = True) -> None:
    """Stop the app. Not graceful: a local Ray that is going away anyway, after a failed start,
    is stopped at once instead of waiting out each replica's shutdown grace period."""
    import ray

    if graceful:
        with contextlib.suppress(Exception):
            serve.shutdown()
    with contextlib.suppress(Exception):
        ray.shutdown()


if __name__ == "__main__":
    main()
