"""The language model: a conversation in, the reply out as a stream of text deltas.

Invariant: `stream_reply` yields only non-empty text deltas (then, if the caller asks with
`finish=True`, one `Finish` saying why it stopped: "length" when cut by `max_tokens`) and, on a
backend failure, raises `LLMError` and nothing else. Closing it early (the consumer stops, the turn is cancelled) stops
the generation: the local model's worker thread sees a stop flag at its next token, an endpoint's
HTTP stream is closed. A local model runs one generation at a time; more wait in a fair queue
(users take turns, `deployments/fair.py`), and a full queue refuses at once with "busy, try again
in N s".

An `LLMError`'s message is for the page: Parley's own words, never a backend's (an endpoint's error
body, its address, llama.cpp's exception text go to the log). A session's read-ahead (`read_ahead`) runs
the local model outside the fair queue, so it is rationed: at most one per user per
`READ_AHEAD_INTERVAL_S`, none that the model has just read, none for a user whose request waits or runs.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncGenerator, Iterator
from contextlib import aclosing
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, cast, overload

from deployments.fair import Busy, FairQueue
from parley.config import LLMConfig, openai_api_key
from parley.engine.settings import PromptSettings
from parley.engine.sight import system_prompt
from parley.engine.types import ChatMessage, Finish, ImagePart
from parley.llamacpp import no_amx_repacking
from parley.local_models import CATALOGUE, LocalModelMissing, host_cores
from parley.logs import setup_logging, starting

if TYPE_CHECKING:
    from openai.types.chat import ChatCompletionMessageParam

log = logging.getLogger("parley.llm")


class LLMError(RuntimeError):
    """The language model backend failed; the message says how, in words a user can act on (Parley's
    own: a backend's text goes to the log, not into this message)."""

    for_user = True
    """The page may show the message as it is (`parley.engine.reply.user_message`)."""


READ_AHEAD_INTERVAL_S = 3.0
"""At most one read-ahead (`LLM.read_ahead`) per user in this many seconds. A read-ahead runs the local
model outside the fair queue (prompt evaluation: up to seconds on 2 cores), and an answer that
arrives meanwhile waits for it; a session asks for one each time the talk key goes down, so a
user pressing it over and over would otherwise keep the model busy for everyone."""


class LLMEngine(Protocol):
    """A loaded backend. `stream` yields non-empty text deltas then, when the backend says why it
    stopped, a `Finish`; it raises only LLMError, and stops generating when closed early."""

    def stream(self, messages: list[ChatMessage]) -> AsyncGenerator[str | Finish, None]: ...


class LLM:
    """The LLM deployment: `stream_reply(messages) -> async iterator of text deltas`. `prompt`: the
    system prompt it adds when a request brings none, and whether (and how) images are sent."""

    def __init__(self, config: LLMConfig, prompt: PromptSettings | None = None) -> None:
        setup_logging()
        start = time.perf_counter()
        self.config = config
        self.prompt = prompt or PromptSettings()
        with starting(log):
            self.engine: LLMEngine = (
                LocalEngine(config, self.prompt) if config.backend == "local" else OpenAIEngine(config, self.prompt)
            )
        self.queue = FairQueue(
            1 if config.backend == "local" else config.queue.concurrent,
            max_waiting=config.queue.max_waiting,
            per_user_waiting=config.queue.waiting_per_user,
        )
        self.generating = 0
        """Answers being generated now."""
        self.abandoned = 0
        """Answers stopped because their caller's process died."""
        self._pending: dict[str, int] = {}
        """Each user's requests waiting in the queue or generating now."""
        self._read_ahead_at: OrderedDict[str, float] = OrderedDict()
        """When each user's latest read-ahead began (`time.monotonic`), newest last; bounded."""
        self._last_read_ahead: list[ChatMessage] | None = None
        """The prompt the latest read-ahead read, while it is what the model holds (an answer since
        made it read another)."""
        log.info("ready in %.2f s", time.perf_counter() - start)

    @overload
    def stream_reply(
        self, messages: list[ChatMessage], *, user: str = "", caller: Any = None, finish: Literal[False] = False
    ) -> AsyncGenerator[str, None]: ...
    @overload
    def stream_reply(
        self, messages: list[ChatMessage], *, user: str = "", caller: Any = None, finish: Literal[True]
    ) -> AsyncGenerator[str | Finish, None]: ...

    async def stream_reply(
        self, messages: list[ChatMessage], *, user: str = "", caller: Any = None, finish: bool = False
    ) -> AsyncGenerator[str | Finish, None]:
        """Stream the assistant's reply to `messages` (the system prompt is added when missing).

        With `finish`, the last item is a `Finish` saying why the model stopped (when it said).
        Waits its turn in the fair queue (by `user`), or raises Busy at once when the queue is full.
        `caller`: the calling Ray actor (an ingress process). A caller that closes the stream stops
        the generation through Serve; one whose process dies cannot, so while this generates, the
        caller is pinged every CALLER_CHECK_S and the generation stops once it is gone.
        """
        if not messages:
            raise ValueError("stream_reply needs at least one message")
        messages = self._with_system_prompt(messages)
        watch = _watch_caller(caller, asyncio.current_task(), self) if caller is not None else None
        who = user or "anonymous"
        self._pending[who] = self._pending.get(who, 0) + 1
        try:
            async with self.queue.slot(who):
                self.generating += 1
                self._last_read_ahead = None  # the model reads this prompt now: what it read ahead is gone
                try:
                    async with aclosing(self.engine.stream(messages)) as stream:
                        async for delta in stream:
                            if finish or isinstance(delta, str):
                                yield delta
                finally:
                    self.generating -= 1
        except Busy as e:
            log.warning("busy: %d waiting, %d generating; refused a turn of %s", self.queue.waiting, self.generating, user[:16])
            raise LLMError(str(e)) from None  # the fair queue's own words, written for the user
        finally:
            self._pending[who] -= 1
            if not self._pending[who]:
                del self._pending[who]
            if watch is not None:
                watch.cancel()

    def pending(self, user: str = "") -> bool:
        """Whether `user` has a request waiting in the queue or generating now."""
        return bool(self._pending.get(user or "anonymous"))

    async def read_ahead(self, messages: list[ChatMessage], *, user: str = "") -> None:
        """Read `messages` into the local model's cache while it is idle (no answer generating or
        waiting), so a request that starts with them reads only what follows; the system prompt is
        added as `stream_reply` adds it. Does nothing for an endpoint or a busy model, for a user with
        a request waiting or generating, within `READ_AHEAD_INTERVAL_S` of the user's last read-ahead, or
        for the prompt the model read ahead last (it holds it still)."""
        engine_read = getattr(self.engine, "read_ahead", None)
        if engine_read is None or self.generating or self.queue.waiting or not messages:
            return
        who = user or "anonymous"
        now = time.monotonic()
        last = self._read_ahead_at.get(who)
        if self.pending(who) or (last is not None and now - last < READ_AHEAD_INTERVAL_S):
            return
        messages = self._with_system_prompt(messages)
        if messages == self._last_read_ahead:
            return
        self._read_ahead_at[who] = now
        self._read_ahead_at.move_to_end(who)
        while len(self._read_ahead_at) > 10_000:
            self._read_ahead_at.popitem(last=False)
        self._last_read_ahead = messages
        read = False
        try:
            read = await engine_read(messages)
        finally:
            if not read:  # skipped (a generation still held the model) or failed: it holds something else
                if self._last_read_ahead is messages:
                    self._last_read_ahead = None
                if last is None:
                    self._read_ahead_at.pop(who, None)
                else:
                    self._read_ahead_at[who] = last

    def _with_system_prompt(self, messages: list[ChatMessage]) -> list[ChatMessage]:
        """`messages`, led by the configured system prompt when they bring none."""
        if messages[0].role != "system" and self.prompt.system_prompt:
            return [ChatMessage(role="system", content=self.prompt.system_prompt), *messages]
        return messages

    async def load(self) -> dict[str, int]:
        """How busy this replica is (answers generating, turns waiting) and answers abandoned so far."""
        return {"generating": self.generating, "waiting": self.queue.waiting, "abandoned": self.abandoned}


CALLER_CHECK_S = 0.5


def _watch_caller(caller: Any, work: asyncio.Task[Any] | None, llm: LLM) -> asyncio.Task[None] | None:
    """A task that cancels `work` once the `caller` actor is dead (a lost ping is not death)."""
    if work is None:
        return None

    async def watch() -> None:
        from ray.exceptions import ActorUnavailableError, RayActorError

        while True:
            await asyncio.sleep(CALLER_CHECK_S)
            try:
                await asyncio.wait_for(caller.__ray_ready__.remote(), timeout=30)
            except RayActorError as e:
                if isinstance(e, ActorUnavailableError):
                    continue  # restarting or unreachable for now: not known to be gone
                llm.abandoned += 1
                log.warning("the caller of an answer is gone (its process died): stopping the answer")
                work.cancel()
                return
            except TimeoutError:
                continue

    return asyncio.get_running_loop().create_task(watch())


def local_model_path(config: LLMConfig) -> str:
    """The GGUF file the local backend loads: `model_path`, else the catalogued `local_model`."""
    if config.model_path:
        if not Path(config.model_path).is_file():
            raise LLMError(f"could not load the local model {config.model_path}: no such file")
        return config.model_path
    try:
        return str(CATALOGUE[config.resolved()[0]].path())
    except LocalModelMissing as e:
        raise LLMError(str(e)) from e


_DONE = object()


class LocalEngine:
    """A GGUF model in-process (llama-cpp-python). `lock` is held while a generation runs."""

    def __init__(self, config: LLMConfig, prompt: PromptSettings) -> None:
        import llama_cpp

        self.config = config
        self.model_path = local_model_path(config)
        threads = config.resolved()[1]
        chosen = (
            f" (auto: the best installed for {host_cores()} cores)"
            if config.local_model == "auto" and not config.model_path
            else ""
        )
        log.info("loading %s%s (llama.cpp, %d threads, context %d)", self.model_path, chosen, threads, config.context_tokens)
        try:
            with no_amx_repacking(llama_cpp):
                self.llama = llama_cpp.Llama(
                    model_path=self.model_path,
                    n_ctx=config.context_tokens,
                    n_threads=threads,
                    n_threads_batch=threads,
                    verbose=False,
                )
        except (ValueError, OSError) as e:
            raise LLMError(f"could not load the local model {self.model_path}: {e}") from e
        self.lock = asyncio.Lock()
        # One token with the system prompt: the first turn then finds it in llama.cpp's prefix
        # cache (~50 ms to first token instead of ~200 ms on 2 cores).
        # The embedded default's sessions get the scene-note system prompt (parley.engine.conversation).
        warm = [{"role": "system", "content": system_prompt(prompt.system_prompt, "note")}, {"role": "user", "content": "Hello."}]
        self.llama.create_chat_completion(messages=warm, max_tokens=1)  # type: ignore[arg-type]

    async def read_ahead(self, messages: list[ChatMessage]) -> bool:
        """Evaluate the prompt `messages` make (one token is generated and dropped): llama.cpp keeps
        it, and the next prompt that starts the same way is read from there. Skipped while a
        generation holds the model; True when it was read."""
        if self.lock.locked():
            return False
        wire = [m.to_openai(with_images=False) for m in messages]
        async with self.lock:
            began = time.perf_counter()
            await asyncio.get_running_loop().run_in_executor(
                None,
                lambda: self.llama.create_chat_completion(messages=wire, max_tokens=1),  # type: ignore[arg-type]
            )
            log.debug("read ahead %d messages in %.0f ms", len(messages), 1000 * (time.perf_counter() - began))
        return True

    async def stream(self, messages: list[ChatMessage]) -> AsyncGenerator[str | Finish, None]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[object] = asyncio.Queue()
        stop = threading.Event()
        wire = [m.to_openai(with_images=False) for m in messages]

        def put(item: object) -> None:
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the loop closed under us; nobody is listening
                stop.set()

        def generate() -> None:
            try:
                chunks = cast(
                    Iterator[Any],
                    self.llama.create_chat_completion(
                        messages=wire,  # type: ignore[arg-type]
                        stream=True,
                        max_tokens=self.config.max_tokens,
                        temperature=self.config.sampling_temperature(),
                        repeat_penalty=self.config.repeat_penalty,
                    ),
                )
                try:
                    for chunk in chunks:
                        if stop.is_set():
                            break
                        choice = chunk["choices"][0]
                        delta = choice["delta"].get("content")
                        if delta:
                            put(delta)
                        if choice.get("finish_reason"):
                            put(Finish(reason=choice["finish_reason"]))
                finally:
                    close = getattr(chunks, "close", None)
                    if close is not None:
                        close()
            except Exception:
                log.exception("local generation failed")  # llama.cpp's own words: for the log only
                put(LLMError("The language model failed on this answer; please try again."))
            finally:
                put(_DONE)

        await self.lock.acquire()
        try:
            worker = loop.run_in_executor(None, generate)
        except BaseException:
            self.lock.release()
            raise
        # The lock follows the thread, not this generator: even if the consumer is cancelled twice,
        # no second generation can start on the (not thread-safe) model until this one has stopped.
        worker.add_done_callback(lambda _: self.lock.release())
        try:
            while (item := await queue.get()) is not _DONE:
                if isinstance(item, LLMError):
                    raise item
                assert isinstance(item, str | Finish)
                yield item
        finally:
            stop.set()


class OpenAIEngine:
    """Any OpenAI-compatible chat endpoint (OpenAI, vLLM, Ray Serve LLM, Ollama) via `openai`.

    Rate limits, server errors and failed connections are retried by the client, with
    exponential backoff, `max_retries` times before the turn fails.
    """

    def __init__(self, config: LLMConfig, prompt: PromptSettings) -> None:
        import openai

        self.config = config
        self.prompt = prompt
        self.where = config.base_url or "https://api.openai.com/v1"
        log.info("loading OpenAI-compatible client for %s at %s", config.model, self.where)
        self.client = openai.AsyncOpenAI(
            base_url=config.base_url,
            api_key=openai_api_key(config) or "none",
            max_retries=config.max_retries,
            timeout=config.timeout_s,
        )

    def _wire(self, message: ChatMessage) -> dict[str, object]:
        if self.prompt.vision and not isinstance(message.content, str):
            parts = [
                p.model_copy(update={"image_url": p.image_url.model_copy(update={"detail": self.prompt.image_detail})})
                if isinstance(p, ImagePart)
                else p
                for p in message.content
            ]
            message = message.model_copy(update={"content": parts})
        return message.to_openai(with_images=self.prompt.vision)

    async def stream(self, messages: list[ChatMessage]) -> AsyncGenerator[str | Finish, None]:
        try:
            stream = await self.client.chat.completions.create(
                model=self.config.model,
                messages=cast("list[ChatCompletionMessageParam]", [self._wire(m) for m in messages]),
                stream=True,
                max_tokens=self.config.max_tokens,
                temperature=self.config.sampling_temperature(),
            )
        except Exception as e:
            log.warning("LLM request to %s failed: %r", self.where, e)
            raise LLMError(explain_openai_error(e, self.config, self.where)) from e
        try:
            async for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    yield chunk.choices[0].delta.content
                if chunk.choices and chunk.choices[0].finish_reason:
                    yield Finish(reason=chunk.choices[0].finish_reason)
        except Exception as e:  # the transport's own errors (a dropped connection) surface here unwrapped
            log.warning("LLM stream from %s broke: %r", self.where, e)
            raise LLMError("The answer was cut off: the connection to the language model dropped.") from e
        finally:
            await stream.close()


def explain_openai_error(exc: BaseException, config: LLMConfig, where: str) -> str:
    """What went wrong with an OpenAI-compatible request, in words a user can act on: Parley's own,
    with the HTTP status. The endpoint's address and its error body stay in the log."""
    import openai

    retries = f" after {config.max_retries} retries" if config.max_retries else ""
    if isinstance(exc, openai.AuthenticationError):
        return f"The language model endpoint refused the API key (HTTP 401). Set ${config.api_key_env} to a valid key."
    if isinstance(exc, openai.PermissionDeniedError):
        return f"The API key may not use the model {config.model!r} (HTTP 403)."
    if isinstance(exc, openai.NotFoundError):
        return f"The language model endpoint has no model {config.model!r} (HTTP 404)."
    if isinstance(exc, openai.RateLimitError):
        return f"The language model is rate limited (HTTP 429){retries}. Try again in a moment."
    if isinstance(exc, openai.APIStatusError) and exc.status_code >= 500:
        return f"The language model endpoint failed (HTTP {exc.status_code}){retries}. Try again in a moment."
    if isinstance(exc, openai.APIStatusError):
        detail = exc.message.splitlines()[0][:200] if exc.message else ""
        log.warning("LLM endpoint %s rejected a request (HTTP %s): %s", where, exc.status_code, detail)
        return f"The language model endpoint rejected the request (HTTP {exc.status_code})."
    if isinstance(exc, openai.APIConnectionError):  # includes timeouts; the address is in the caller's log line
        return f"Could not reach the language model{retries}. Try again in a moment."
    log.warning("unexpected LLM error from %s: %r", where, exc)  # the raw text is for the log, not the page
    return f"The language model failed unexpectedly ({type(exc).__name__}). Try again in a moment."


async def _check(config: LLMConfig, prompt: PromptSettings, question: str) -> str:
    llm = LLM(config, prompt)
    return "".join([d async for d in llm.stream_reply([ChatMessage(role="user", content=question)])])


def main(argv: list[str] | None = None) -> None:
    """`python -m deployments.llm [--question Q] [config flags]`: load the configured LLM here, answer once, exit 0.

    Runs the same engine a replica runs, in a process of its own, so a native crash shows up as
    this process's exit signal instead of a dead replica (tests/test_llm_engine.py relies on it).
    """
    import argparse

    from parley.config import parse_args

    parser = argparse.ArgumentParser(description="Answer one question with the configured LLM, then exit.")
    parser.add_argument("--question", default="Which planet is closest to the sun?")
    parser.add_argument("--verbose", action="store_true", help="show the deployment's log lines")
    ns, rest = parser.parse_known_args(argv)
    parsed = parse_args(rest)
    config = parsed.llm
    if ns.verbose:
        setup_logging()
    else:  # one plain line on failure, not the replica-style traceback
        quiet = logging.getLogger("parley")
        quiet.addHandler(logging.NullHandler())
        quiet.propagate = False
    try:
        short = config.model_copy(update={"max_tokens": min(config.max_tokens, 48)})
        answer = asyncio.run(_check(short, parsed.prompt, ns.question))
    except LLMError as e:
        raise SystemExit(f"parley: the LLM could not answer: {e}") from None
    print(answer.strip())


if __name__ == "__main__":
    main()
