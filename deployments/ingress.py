"""The ingress deployment: `serve.ingress.per_node` processes on each node (sharing its port with
SO_REUSEPORT), each serving browsers itself and calling the models by handle.

Invariant: all model work goes through async DeploymentHandles; streaming calls are consumed
as they arrive and cancelled when the consumer stops (barge-in, disconnect).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any, cast

import numpy as np
import ray
from ray import serve
from ray.exceptions import RayActorError, RayTaskError
from ray.serve.handle import DeploymentHandle, DeploymentResponseGenerator

from media.packet import OpusPacket
from parley.config import ParleyConfig
from parley.engine.metrics import STAGES, Meter
from parley.engine.services import NO_VISION, ServiceError
from parley.engine.types import ChatMessage, Finish, SceneNote, Transcript, VideoSource, VisionInfo
from parley.ingress.server import IngressServer
from parley.ingress.warmup import warm_up
from parley.logs import setup_logging, starting

log = logging.getLogger("parley.ingress")

_BOUNDARIES = [0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0]


def user_error(service: str, exc: BaseException) -> ServiceError:
    """A failure that came back through a handle, as a message for the page.

    Ray wraps a replica's exception in RayTaskError (its `cause` is the original, whose message
    the deployments write for users); a replica that died mid-call raises RayActorError.
    """
    if isinstance(exc, RayActorError):
        return ServiceError(f"The {service} service stopped in the middle of this turn.")
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException):
        return ServiceError(str(cause).strip() or f"The {service} service failed ({type(cause).__name__}).")
    return ServiceError(f"The {service} service failed: {exc}")


def _current_actor() -> Any:
    """The Ray actor this code runs in (a Serve replica), or None outside one."""
    try:
        return ray.get_runtime_context().current_actor
    except Exception:  # not in an actor (a driver, a test)
        return None


class HandleServices:
    """The Services protocol over Serve deployment handles."""

    def __init__(
        self, asr: DeploymentHandle, llm: DeploymentHandle, tts: DeploymentHandle, vision: DeploymentHandle | None = None
    ) -> None:
        self._asr = asr
        self._vision = vision
        self._llm = llm.options(stream=True)
        self._llm_plain = llm
        self._tts = tts.options(stream=True)
        self._me = _current_actor()
        """This ingress process's actor: the LLM stops an answer whose caller has died."""

    async def transcribe(self, audio: np.ndarray) -> Transcript:
        try:
            result: Transcript = await self._asr.transcribe.remote(audio)
        except (RayTaskError, RayActorError) as exc:
            raise user_error("speech recognition", exc) from exc
        return result

    async def read_ahead(self, messages: list[ChatMessage], *, user: str = "") -> None:
        try:
            await self._llm_plain.read_ahead.remote(messages, user=user)
        except (RayTaskError, RayActorError) as exc:  # a hint: the turn itself will say what is wrong
            log.debug("reading ahead failed: %s", exc)

    async def describe(self, jpeg: bytes, source: VideoSource = "camera") -> SceneNote:
        if self._vision is None:
            raise ServiceError(NO_VISION)
        try:
            note: SceneNote = await self._vision.describe.remote(jpeg, source)
        except (RayTaskError, RayActorError) as exc:
            raise user_error("vision", exc) from exc
        return note

    async def vision_info(self) -> VisionInfo | None:
        if self._vision is None:
            return None
        info: VisionInfo = await self._vision.info.remote()
        return info

    async def stream_reply(self, messages: list[ChatMessage], *, user: str = "") -> AsyncIterator[str | Finish]:
        async for delta in self._stream(
            "language model", self._llm.stream_reply.remote(messages, user=user, caller=self._me, finish=True)
        ):
            yield delta

    async def synthesize(self, text: str, voice: str | None = None) -> AsyncIterator[OpusPacket]:
        async for chunk in self._stream("speech synthesis", self._tts.synthesize_chunks.remote(text, voice)):
            for packet in chunk:
                yield packet

    @staticmethod
    async def _stream(service: str, response: object) -> AsyncIterator[Any]:
        stream = cast(DeploymentResponseGenerator, response)
        try:
            async for item in stream:
                yield item
        except (RayTaskError, RayActorError) as exc:
            raise user_error(service, exc) from exc
        finally:
            stream.cancel()


class ServeMeter(Meter):
    """Parley's measurements as Ray Serve metrics (Prometheus names get Ray's `ray_` prefix).

    One histogram per stage (`parley_<stage>_seconds`), `parley_sessions` (gauge),
    `parley_turns_total`, `parley_errors_total{stage}`, `parley_late_packets_total` and
    `parley_microphone_packets_total{outcome}` (counters).
    """

    def __init__(self) -> None:
        self._stages = {
            stage: serve.metrics.Histogram(
                f"parley_{stage}_seconds",
                description=f"Per-turn {stage} in seconds (defined in parley/engine/metrics.py).",
                boundaries=_BOUNDARIES,
            )
            for stage in STAGES
        }
        self._sessions = serve.metrics.Gauge("parley_sessions", description="Browsers connected to this ingress.")
        self._turns = serve.metrics.Counter("parley_turns_total", description="Turns started.")
        self._errors = serve.metrics.Counter(
            "parley_errors_total", description="Turns whose stage failed (asr, llm, tts).", tag_keys=("stage",)
        )
        self._late = serve.metrics.Counter(
            "parley_late_packets_total", description="Audio packets that left a pacing track more than 20 ms late."
        )
        self._microphone = serve.metrics.Counter(
            "parley_microphone_packets_total",
            description="Microphone packets by outcome: received, lost; of the lost, repaired from red or fec, or concealed.",
            tag_keys=("outcome",),
        )

    def stage(self, stage: str, seconds: float) -> None:
        self._stages[stage].observe(seconds)

    def turn(self) -> None:
        self._turns.inc()

    def error(self, stage: str) -> None:
        self._errors.inc(tags={"stage": stage})

    def sessions(self, count: int) -> None:
        self._sessions.set(count)

    def late_packets(self, count: int) -> None:
        self._late.inc(count)

    def microphone_packets(self, outcome: str, count: int) -> None:
        self._microphone.inc(count, tags={"outcome": outcome})


class Ingress:
    """Serve deployment: runs one of this node's aiohttp/socket.io/aiortc servers (one replica of
    `serve.ingress.per_node` on the node)."""

    async def __init__(  # type: ignore[misc]  # Serve (like Ray actors) allows an async constructor
        self,
        config: ParleyConfig | dict[str, Any],
        asr: DeploymentHandle,
        llm: DeploymentHandle,
        tts: DeploymentHandle,
        vision: DeploymentHandle | None = None,
    ) -> None:
        setup_logging()
        self.config = ParleyConfig.model_validate(config)
        services = HandleServices(asr, llm, tts, vision)
        # Before the port opens: the first browser's first turn finds every path warm.
        await warm_up(services, system_prompt=self.config.prompt.system_prompt, voice=self.config.tts.voice)
        with starting(log):
            self.server = IngressServer(self.config, services, meter=ServeMeter())
            await self.server.start()

    async def url(self) -> str:
        """The address browsers open for this node."""
        return self.server.url

    async def __del__(self) -> None:
        await self.server.stop()
