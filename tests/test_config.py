"""The configuration: its sections by concern, its flags, and keys that moved (no Ray, no models)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, get_args

import pytest
import yaml
from pydantic import BaseModel, ValidationError

from parley.config import OLD_KEYS, ParleyConfig, _leaf_fields, flag, parse_args
from parley.engine.settings import TurnSettings
from parley.policy import session_settings, sight, takes_images

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ["serve_config.yaml", "serve_cluster.yaml", "serve_cluster_llm.yaml"]


def sections(model: type[BaseModel], path: str = "") -> dict[str, type[BaseModel]]:
    """Every model in the configuration's tree by its dotted path ("" is ParleyConfig itself)."""
    found = {path: model}
    for name, field in model.model_fields.items():
        for kind in (field.annotation, *get_args(field.annotation)):
            if isinstance(kind, type) and issubclass(kind, BaseModel):
                found |= sections(kind, f"{path}.{name}".lstrip("."))
    return found


def nested(dotted: str, value: Any) -> dict[str, Any]:
    """{"a": {"b": value}} for "a.b"."""
    *parents, name = dotted.split(".")
    data: dict[str, Any] = {name: value}
    for parent in reversed(parents):
        data = {parent: data}
    return data


def test_no_section_has_more_than_15_fields() -> None:
    tree = sections(ParleyConfig)
    assert {"turn.vad", "turn.end_of_turn", "llm.queue", "webrtc", "prompt", "reply", "serve.asr", "serve.ingress"} <= set(tree)
    crowded = {path or "(top)": len(model.model_fields) for path, model in tree.items() if len(model.model_fields) > 15}
    assert crowded == {}


def test_the_turn_section_is_the_engines_own_settings() -> None:
    assert ParleyConfig.model_fields["turn"].annotation is TurnSettings
    config = ParleyConfig.model_validate({"turn": {"vad": {"threshold": 0.6}, "interruption": {"enabled": False}}})
    assert (config.turn.vad.threshold, config.turn.interruption.enabled) == (0.6, False)


@pytest.mark.parametrize("old", sorted(OLD_KEYS))
def test_an_old_key_in_a_file_is_refused_with_its_new_name(old: str) -> None:
    with pytest.raises(ValidationError) as caught:
        ParleyConfig.model_validate(nested(old, "1"))
    assert f"{old} is now {OLD_KEYS[old]}" in str(caught.value)


def test_every_new_key_exists() -> None:
    leaves = {dotted for dotted, _ in _leaf_fields(ParleyConfig)}
    for old, new in OLD_KEYS.items():
        wanted = [new.replace("{asr,llm,tts,vision}", name) for name in ("asr", "llm", "tts", "vision")] if "{" in new else [new]
        assert set(wanted) <= leaves, old
        assert old not in leaves, f"{old} is still a key"


def test_a_new_section_named_like_an_old_key_is_not_mistaken_for_it() -> None:
    config = ParleyConfig.model_validate({"turn": {"end_of_turn": {"judge": "silence", "silence_s": 0.8}}})
    assert (config.turn.end_of_turn.judge, config.turn.end_of_turn.silence_s) == ("silence", 0.8)


def test_an_old_key_in_a_serve_configs_args_is_refused(tmp_path: Path) -> None:
    serve_config = {
        "applications": [{"name": "parley", "import_path": "serve_app:build_app", "args": nested("llm.vision", True)}]
    }
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump(serve_config))
    with pytest.raises(ValidationError, match=r"llm\.vision is now prompt\.vision"):
        ParleyConfig.from_yaml(path)


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["--turn-barge-in"], "--turn-interruption-enabled"),
        (["--no-turn-barge-in"], "--no-turn-interruption-enabled"),
        (["--no-turn-speculate"], "--no-turn-speculation-enabled"),
        (["--turn-end-silence-s", "0.8"], "--turn-end-of-turn-silence-s"),
        (["--turn-end-of-turn", "silence"], "--turn-end-of-turn-judge"),
        (["--server-turn-secret-env", "X"], "--webrtc-relay-secret-env"),
        (["--llm-scene-note", "always"], "--prompt-scene-note"),
        (["--serve-ingress-replicas", "2"], "--serve-ingress-nodes"),
    ],
)
def test_an_old_flag_is_refused_with_the_new_ones_name(argv: list[str], named: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse_args(argv)
    assert f"{argv[0]} is now {named} " in capsys.readouterr().err


def test_a_flag_whose_name_did_not_change_still_works() -> None:
    # serve.asr_cpus -> serve.asr.cpus and turn.echo_cancel -> turn.echo.cancel keep their flags
    config = parse_args(["--serve-asr-cpus", "1", "--no-turn-echo-cancel", "--turn-vad-threshold", "0.7"])
    assert (config.serve.asr.cpus, config.turn.echo.cancel, config.turn.vad.threshold) == (1.0, False, 0.7)


def test_nested_fields_are_flags_by_their_dotted_path(tmp_path: Path) -> None:
    assert flag("serve.asr.max_replicas") == "--serve-asr-max-replicas"
    path = tmp_path / "parley.yaml"
    path.write_text(yaml.safe_dump({"turn": {"vad": {"pause_s": 0.1}}, "serve": {"asr": {"gpus": 1}}}))
    config = parse_args(
        [
            *("--config", str(path)),
            *("--turn-vad-threshold", "0.6", "--serve-asr-max-replicas", "3", "--no-turn-interruption-enabled"),
            *("--llm-queue-concurrent", "4", "--ice-address", "127.0.0.1", "--webrtc-ice-servers", "stun:stun.example.org"),
            *("--reply-first-clause-words", "null", "--port", "9000"),
        ]
    )
    assert (config.turn.vad.threshold, config.turn.vad.pause_s) == (0.6, 0.1), "the flag joins the file's section"
    assert (config.serve.asr.max_replicas, config.serve.asr.gpus, config.serve.asr.cpus) == (3, 1.0, 0.5)
    assert config.turn.interruption.enabled is False and config.llm.queue.concurrent == 4
    assert config.webrtc.ice_addresses == ["127.0.0.1"] and config.webrtc.ice_servers[0].urls == ["stun:stun.example.org"]
    assert config.reply.first_clause_words is None and config.server.port == 9000


def test_each_deployment_keeps_its_own_defaults() -> None:
    serve = ParleyConfig().serve
    assert {name: d.cpus for name, d in serve.deployments().items()} == {"asr": 0.5, "llm": 0.5, "tts": 0.25, "vision": 0.25}
    assert all((d.min_replicas, d.max_replicas, d.max_ongoing_requests) == (1, 1, 32) for d in serve.deployments().values())
    assert (serve.asr.target_ongoing_requests, serve.asr.upscale_delay_s, serve.asr.downscale_delay_s) == (2.0, 5.0, 30.0)
    assert (serve.ingress.cpus, serve.ingress.nodes, serve.ingress.per_node) == (0.25, 1, 1)
    given = ParleyConfig.model_validate({"serve": {"asr": {"gpus": 1}, "tts": {"max_replicas": 2}}}).serve
    assert (given.asr.cpus, given.asr.gpus, given.tts.cpus) == (0.5, 1.0, 0.25), "a section given in part keeps its own cpus"


def test_more_replicas_at_least_than_at_most_names_the_deployment() -> None:
    with pytest.raises(ValidationError, match=r"serve\.vision\.min_replicas \(3\) is above serve\.vision\.max_replicas \(2\)"):
        ParleyConfig.model_validate({"serve": {"vision": {"min_replicas": 3, "max_replicas": 2}}})


@pytest.mark.parametrize("name", SHIPPED)
def test_the_shipped_serve_configs_validate(name: str) -> None:
    config = ParleyConfig.from_yaml(ROOT / name)
    assert config.server.port in (8080, 8443)


@pytest.mark.parametrize(
    ("data", "seen"),
    [
        ({}, "note"),
        ({"vision": {"enabled": False}}, "blind"),
        ({"prompt": {"vision": False}}, "blind"),
        ({"llm": {"backend": "openai"}}, "image"),
        ({"llm": {"backend": "openai"}, "prompt": {"vision": False}}, "blind"),
    ],
)
def test_how_the_model_sees_follows_the_backend_and_the_prompt(data: dict[str, Any], seen: str) -> None:
    config = ParleyConfig.model_validate(data)
    assert sight(config) == seen and takes_images(config) == (seen == "image")


def test_a_sessions_settings_are_the_configs_sections() -> None:
    config = ParleyConfig.model_validate(
        {"turn": {"hands_free": True}, "prompt": {"keep_images": 3}, "limits": {"history_messages": 50}, "tts": {"voice": "x"}}
    )
    settings = session_settings(config)
    assert settings.turn is config.turn and settings.reply is config.reply and settings.prompt is config.prompt
    assert (settings.limits.history_messages, settings.voice, settings.sight, settings.model.local) == (50, "x", "note", True)


def test_a_dumped_config_validates_again() -> None:
    """Benchmarks and the ingress rebuild configs from their dumps: no new key reads as an old one."""
    config = ParleyConfig.from_yaml(ROOT / "serve_cluster.yaml")
    assert ParleyConfig.model_validate(config.model_dump()) == config
    assert ParleyConfig.model_validate(config.model_dump(mode="json")) == config
