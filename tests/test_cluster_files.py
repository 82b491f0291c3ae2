"""The cluster files an operator runs: cluster.yaml (`ray up`), the Serve configs, the dashboard.

Fast checks with no Ray started: each file is what its tool accepts (Ray's own cluster-config
and Serve-config schemas), the files agree with each other (ports, GPUs, node counts), and the
dashboard only charts metrics that Parley and Serve export.
"""

from __future__ import annotations

import importlib
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from ray.serve.schema import ServeDeploySchema

from parley.config import ParleyConfig
from parley.engine.metrics import STAGES
from parley.ingress.ice import parse_port_range

ROOT = Path(__file__).resolve().parent.parent
SERVE_CONFIGS = ["serve_config.yaml", "serve_cluster.yaml", "serve_cluster_llm.yaml"]
DASHBOARD = ROOT / "dashboards" / "parley-grafana.json"
METRICS_PORT = "--metrics-export-port=8080"


def load_yaml(name: str) -> dict[str, Any]:
    data = yaml.safe_load((ROOT / name).read_text())
    assert isinstance(data, dict), f"{name} is not a mapping"
    return data


@pytest.fixture(scope="module")
def cluster() -> dict[str, Any]:
    return load_yaml("cluster.yaml")


@pytest.fixture(scope="module")
def app_args() -> ParleyConfig:
    return ParleyConfig.model_validate(load_yaml("serve_cluster.yaml")["applications"][0]["args"])


def gpu_types(cluster: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: t for name, t in cluster["available_node_types"].items() if t.get("resources", {}).get("GPU", 0) > 0}


def commands(cluster: dict[str, Any], key: str) -> list[str]:
    value = cluster.get(key) or []
    assert all(isinstance(c, str) for c in value), f"{key} must be a list of shell commands"
    return list(value)


# -- cluster.yaml ---------------------------------------------------------------------------


def test_cluster_yaml_has_what_ray_up_needs(cluster: dict[str, Any]) -> None:
    for key in ("cluster_name", "provider", "available_node_types", "head_node_type", "max_workers"):
        assert key in cluster, f"cluster.yaml lacks {key}"
    assert cluster["provider"]["type"] == "aws"
    head = cluster["available_node_types"][cluster["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0, "the head is a CPU node"
    assert gpu_types(cluster), "no worker type offers a GPU"
    for name, node_type in gpu_types(cluster).items():
        assert 0 <= node_type["min_workers"] <= node_type["max_workers"] <= cluster["max_workers"], name
    assert cluster["idle_timeout_minutes"] > 0 and cluster["upscaling_speed"] > 0


def test_cluster_yaml_passes_rays_own_validation(cluster: dict[str, Any]) -> None:
    # What `ray up` does before it touches the cloud: fill in the provider's defaults, then
    # check the result against Ray's JSON schema (no AWS call, no boto3 needed).
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(json.loads(json.dumps(cluster))))


def test_every_node_exports_metrics_and_the_head_deploys_the_app(cluster: dict[str, Any]) -> None:
    head, worker = commands(cluster, "head_start_ray_commands"), commands(cluster, "worker_start_ray_commands")
    head_start = next(c for c in head if "ray start --head" in c)
    worker_start = next(c for c in worker if "ray start --address" in c)
    assert METRICS_PORT in head_start and METRICS_PORT in worker_start
    assert "--dashboard-host=0.0.0.0" in head_start
    deploy = next((c for c in head if "serve deploy" in c), "")
    assert "serve_cluster.yaml" in deploy and "serve_cluster_llm.yaml" in deploy, "the head should deploy the Serve app"
    setup = commands(cluster, "setup_commands")
    assert any("scripts/install.sh" in c for c in setup), "every node runs scripts/install.sh"


def test_every_command_is_valid_shell(cluster: dict[str, Any]) -> None:
    keys = [k for k in cluster if k.endswith("_commands")]
    for key in keys:
        for command in commands(cluster, key):
            result = subprocess.run(["bash", "-n", "-c", command], capture_output=True, text=True)
            assert result.returncode == 0, f"{key}: {command!r}: {result.stderr}"


def test_security_group_opens_the_ports_the_app_uses(cluster: dict[str, Any], app_args: ParleyConfig) -> None:
    rules = cluster["provider"]["security_group"]["IpPermissions"]
    opened = {(r["IpProtocol"], r["FromPort"], r["ToPort"]) for r in rules}
    assert ("tcp", app_args.server.port, app_args.server.port) in opened
    assert app_args.webrtc.udp_ports is not None
    udp = parse_port_range(app_args.webrtc.udp_ports)
    assert ("udp", udp.start, udp.stop - 1) in opened
    dashboard = [r for r in rules if r["FromPort"] == 8265]
    assert all(ip["CidrIp"] != "0.0.0.0/0" for r in dashboard for ip in r["IpRanges"]), "dashboard open to everyone"


def test_cluster_has_room_for_the_serve_app(cluster: dict[str, Any], app_args: ParleyConfig) -> None:
    serve = app_args.serve
    types = cluster["available_node_types"]
    head = types[cluster["head_node_type"]]
    workers = [t for name, t in types.items() if name != cluster["head_node_type"]]
    # Ingress nodes: as many as the nodes that are always up (head + min_workers), each running
    # serve.ingress.per_node ingress processes.
    ingress = serve.ingress
    assert ingress.nodes == 1 + sum(t.get("min_workers", 0) for t in workers)
    assert ingress.cpus * ingress.per_node <= head["resources"]["CPU"]
    # Every ASR replica the autoscaler may ask for fits on a GPU that the cluster may start.
    gpus = sum(t["max_workers"] * t["resources"]["GPU"] for t in gpu_types(cluster).values())
    assert serve.asr.gpus > 0
    assert serve.asr.max_replicas * serve.asr.gpus <= gpus
    for node_type in gpu_types(cluster).values():
        assert serve.asr.cpus + ingress.cpus * ingress.per_node <= node_type["resources"]["CPU"]


# -- Serve configs ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", SERVE_CONFIGS)
def test_serve_config_is_valid_for_serve_and_parley(name: str) -> None:
    data = load_yaml(name)
    schema = ServeDeploySchema.model_validate(data)
    app = schema.applications[0]
    if len(schema.applications) == 1:
        assert schema.proxy_location == "Disabled"
    assert app.route_prefix is None
    assert app.runtime_env and "PYTHONPATH" in app.runtime_env["env_vars"]
    module, _, attr = app.import_path.partition(":")
    import serve_app

    assert getattr(importlib.import_module(module), attr) is serve_app.build_app
    ParleyConfig.model_validate(data["applications"][0]["args"])  # extra fields are rejected


def test_cluster_serve_config_is_production(app_args: ParleyConfig) -> None:
    server = app_args.server
    assert (server.host, server.port) == ("0.0.0.0", 8443)
    assert server.cert_file and server.key_file
    assert Path(server.cert_file).is_absolute() and Path(server.key_file).is_absolute(), "paths are not expanded"
    assert app_args.webrtc.public_address is None, "one address for every node's ingress would be wrong on all but one"
    assert any(url.startswith(("stun:", "turn:")) for s in app_args.webrtc.ice_servers for url in s.urls)
    assert (app_args.asr.backend, app_args.asr.device) == ("transformers", "cuda")
    assert app_args.llm.backend == "openai" and app_args.tts.backend == "openai"
    assert app_args.serve.asr.min_replicas <= app_args.serve.asr.max_replicas


def test_building_the_apps_does_not_start_ray() -> None:
    # In a fresh interpreter: other tests in this session may have started Ray already.
    script = """
import sys, yaml, ray
from ray.serve import Application
import serve_app
for name in sys.argv[1:]:
    app = serve_app.build_app(yaml.safe_load(open(name))["applications"][0]["args"])
    assert isinstance(app, Application), type(app)
assert not ray.is_initialized(), "building the app started Ray"
print("built", len(sys.argv) - 1)
"""
    result = subprocess.run([sys.executable, "-c", script, *SERVE_CONFIGS], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert f"built {len(SERVE_CONFIGS)}" in result.stdout


# -- the vision LLM on the cluster (serve_cluster_llm.yaml) ---------------------------------------
# Ray Serve LLM itself cannot be imported here (it needs vLLM), so its application is checked
# against the cluster and against Parley's side of the connection.


@pytest.fixture(scope="module")
def llm_variant() -> dict[str, Any]:
    return load_yaml("serve_cluster_llm.yaml")


def test_the_llm_application_is_ray_serve_llm_and_parley_asks_it_for_its_model(llm_variant: dict[str, Any]) -> None:
    parley, llm = llm_variant["applications"]
    assert llm["import_path"] == "ray.serve.llm:build_openai_app"
    [model] = llm["args"]["llm_configs"]
    args = ParleyConfig.model_validate(parley["args"])
    assert args.llm.backend == "openai" and args.llm.model == model["model_loading_config"]["model_id"]
    assert model["engine_kwargs"]["limit_mm_per_prompt"]["image"] >= args.prompt.keep_images, "Parley may send more images"
    # The route: this node's own Serve proxy, on loopback only, where the llm application lives.
    proxy = llm_variant["http_options"]
    assert llm_variant["proxy_location"] == "EveryNode" and proxy["host"] == "127.0.0.1"
    assert args.llm.base_url == f"http://127.0.0.1:{proxy['port']}{llm['route_prefix'].rstrip('/')}/v1"
    assert (args.tts.backend, args.asr.device) == ("hibari", "cuda"), "no part of the stack needs an outside key"


def test_the_cluster_has_gpus_for_the_llm_and_keeps_asr_off_them(cluster: dict[str, Any], llm_variant: dict[str, Any]) -> None:
    parley, llm = llm_variant["applications"]
    [model] = llm["args"]["llm_configs"]
    label = f"accelerator_type:{model['accelerator_type']}"
    hosts = [t for t in cluster["available_node_types"].values() if label in t.get("resources", {})]
    assert hosts, f"no node type offers {label}: the LLM replicas could never be placed"
    gpus_per_node = min(t["resources"]["GPU"] for t in hosts)
    parallel = model["engine_kwargs"]["tensor_parallel_size"]
    assert parallel <= gpus_per_node
    scaling = model["deployment_config"]["autoscaling_config"]
    assert scaling["min_replicas"] <= scaling["max_replicas"]
    assert scaling["max_replicas"] * parallel <= sum(t["max_workers"] * t["resources"]["GPU"] for t in hosts)
    asr = ParleyConfig.model_validate(parley["args"]).serve.asr.accelerator_type
    assert asr and asr != model["accelerator_type"], "ASR replicas must not take the LLM's GPUs"
    assert any(f"accelerator_type:{asr}" in t.get("resources", {}) for t in cluster["available_node_types"].values())
    setup = " ".join(commands(cluster, "setup_commands"))
    assert "ray[llm]==" in setup and "serve_cluster_llm.yaml" in " ".join(commands(cluster, "head_start_ray_commands"))


async def test_parley_streams_from_the_llm_route_as_configured(llm_variant: dict[str, Any], fake, monkeypatch) -> None:
    """The Parley side of the connection, against a fake that speaks the OpenAI wire protocol."""
    from deployments.llm import LLM
    from parley.engine.types import ChatMessage, ImagePart, ImageURL, TextPart
    from tests.support.fake_openai import API_KEY

    args = ParleyConfig.model_validate(llm_variant["applications"][0]["args"])
    monkeypatch.setenv(args.llm.api_key_env, API_KEY)
    llm = LLM(args.llm.model_copy(update={"base_url": fake.base_url}), args.prompt)  # the fake stands where the route would be
    frame = ImagePart(image_url=ImageURL(url="data:image/jpeg;base64,AAAA"))
    question = ChatMessage(role="user", content=[TextPart(text="What do you see?"), frame])
    assert [d async for d in llm.stream_reply([question])] == fake.reply
    body = fake.bodies("/v1/chat/completions")[0]
    assert body["model"] == "qwen2.5-vl-7b" and body["stream"] is True
    sent = body["messages"][-1]["content"]
    assert sent[1] == {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,AAAA", "detail": "low"}}


# -- Grafana dashboard ------------------------------------------------------------------------

PARLEY_METRICS = {f"ray_parley_{stage}_seconds_bucket" for stage in STAGES} | {
    "ray_parley_sessions",
    "ray_parley_turns_total",
    "ray_parley_errors_total",
    "ray_parley_late_packets_total",
    "ray_parley_microphone_packets_total",
}
_METRIC = re.compile(r"\b(ray_[a-zA-Z0-9_]+)")


def dashboard_panels() -> list[dict[str, Any]]:
    panels = json.loads(DASHBOARD.read_text())["panels"]
    return [p for p in panels if p["type"] != "row"]


def test_dashboard_uses_a_templated_prometheus_datasource() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert 36 <= dashboard["schemaVersion"] <= 41
    [variable] = [v for v in dashboard["templating"]["list"] if v["name"] == "datasource"]
    assert (variable["type"], variable["query"]) == ("datasource", "prometheus")
    for panel in dashboard_panels():
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def test_dashboard_charts_only_exported_metrics_and_all_of_them() -> None:
    used: set[str] = set()
    for panel in dashboard_panels():
        for target in panel["targets"]:
            expr = target["expr"]
            assert expr.count("(") == expr.count(")"), expr
            names = set(_METRIC.findall(expr))
            assert names, expr
            unknown = {n for n in names if n not in PARLEY_METRICS and not n.startswith("ray_serve_")}
            assert not unknown, f"{panel['title']}: not exported: {unknown}"
            used |= names
    assert PARLEY_METRICS <= used, f"not charted: {PARLEY_METRICS - used}"
    assert "ray_serve_deployment_replica_healthy" in used


def test_dashboard_shows_p50_and_p95_of_every_stage() -> None:
    exprs = [t["expr"] for p in dashboard_panels() for t in p["targets"]]
    for stage in STAGES:
        for quantile in ("0.5", "0.95"):
            wanted = f"histogram_quantile({quantile}, sum by (le) (rate(ray_parley_{stage}_seconds_bucket[5m])))"
            assert wanted in exprs, wanted


# -- docs -------------------------------------------------------------------------------------


def test_readme_points_at_the_cluster_files() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("### Run it on a cluster") :].split("\n## ", 1)[0]
    for path in ("cluster.yaml", "serve_cluster.yaml", "docs/cluster.md", "dashboards/parley-grafana.json"):
        assert f"({path})" in section, f"README's cluster section does not link {path}"
        assert (ROOT / path).exists(), path
