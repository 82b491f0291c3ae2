"""Debian's Firefox ESR for tests: a sound server for it, and one page driven by firefox_driver.mjs (beside this file).

Invariant: `pulse_server` yields a running PulseAudio with only a null sink (nothing reaches a
real device) and stops it on exit; `firefox` yields a `Firefox` whose page has a fresh profile,
the prefs of a headless browser that may call 127.0.0.1 with a microphone nobody is asked about,
and that sound server; on exit Firefox and its Node driver are gone. Every request is one JSON line to the
driver and one answer back; what the page raised or logged as an error is collected in `errors`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

from tests.support import ROOT

DRIVER = Path(__file__).resolve().with_name("firefox_driver.mjs")
FIREFOX = "/usr/bin/firefox-esr"


def missing() -> str | None:
    """Why Firefox tests cannot run here, or None when they can."""
    if not Path(FIREFOX).exists():
        return "firefox-esr is not installed (scripts/install.sh --dev installs it)"
    if not shutil.which("pulseaudio"):
        return "pulseaudio is not installed (scripts/install.sh --dev installs it)"
    if not shutil.which("node"):
        return "node is not installed"
    if not (ROOT / "node_modules" / "puppeteer-core").is_dir():
        return "node_modules/puppeteer-core is missing (run npm ci)"
    return None


@contextlib.contextmanager
def pulse_server(folder: Path) -> Iterator[dict[str, str]]:
    """A PulseAudio daemon for this test only, with a null sink; yields the environment that points a client at it.

    Firefox keeps its AudioContext suspended without an output device; this gives it one.
    """
    folder.mkdir(parents=True, exist_ok=True)
    socket = folder / "native"
    env = {**os.environ, "HOME": str(folder), "XDG_RUNTIME_DIR": str(folder), "PULSE_RUNTIME_PATH": str(folder)}
    daemon = subprocess.Popen(
        [
            "pulseaudio",
            "--daemonize=no",
            "--exit-idle-time=-1",
            "--disallow-exit",
            "--use-pid-file=no",
            "--log-target=stderr",
            "--log-level=error",
            "-n",  # no default.pa: only the modules below
            "--load=module-null-sink sink_name=parley",
            f"--load=module-native-protocol-unix socket={socket} auth-anonymous=1",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=(folder / "pulseaudio.log").open("wb"),
    )
    try:
        deadline = time.monotonic() + 10
        while not socket.exists():
            assert daemon.poll() is None, f"pulseaudio exited: {(folder / 'pulseaudio.log').read_text()}"
            assert time.monotonic() < deadline, "pulseaudio made no socket within 10 s"
            time.sleep(0.05)
        yield {"PULSE_SERVER": f"unix:{socket}", "PULSE_RUNTIME_PATH": str(folder), "XDG_RUNTIME_DIR": str(folder)}
    finally:
        daemon.terminate()
        try:
            daemon.wait(timeout=10)
        except subprocess.TimeoutExpired:
            daemon.kill()
            daemon.wait()


class DriverError(AssertionError):
    """A request the driver answered with an error (a timeout, a script that threw, a missing element)."""


class Firefox:
    """One Firefox page; every method is one request to firefox_driver.mjs."""

    def __init__(self, process: asyncio.subprocess.Process, log: Path) -> None:
        self.process = process
        self.log = log
        self.version = ""
        self.errors: list[str] = []
        """Uncaught exceptions and console errors of the page, in order."""
        self.console: list[str] = []
        """Every console message of the page, in order."""
        self._next = 0
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._ready: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.process.stdout is not None
        while line := await self.process.stdout.readline():
            message = json.loads(line)
            if "id" in message:
                future = self._pending.pop(message["id"], None)
                if future and not future.done():
                    if message["ok"]:
                        future.set_result(message["value"])
                    else:
                        future.set_exception(DriverError(message["error"]))
            elif message["event"] == "ready":
                self._ready.set_result(message["version"])
            elif message["event"] == "pageerror":
                self.errors.append(f"pageerror: {message['text']}")
            elif message["event"] == "console":
                self.console.append(f"console.{message['type']}: {message['text']}")
                if message["type"] == "error":
                    self.errors.append(self.console[-1])
        gone = DriverError(f"the Firefox driver exited ({self.process.returncode}); see {self.log}")
        for future in [self._ready, *self._pending.values()]:
            if not future.done():
                future.set_exception(gone)
        self._pending.clear()

    async def request(self, op: str, timeout_s: float = 120, **fields: Any) -> Any:
        """Send one request and wait for its answer; DriverError if the driver failed it."""
        assert self.process.stdin is not None
        self._next += 1
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[self._next] = future
        self.process.stdin.write(json.dumps({"id": self._next, "op": op, **fields}).encode() + b"\n")
        await self.process.stdin.drain()
        return await asyncio.wait_for(future, timeout_s)

    async def init_script(self, source: str) -> None:
        """Run `source` in every document before the page's own scripts (WebDriver BiDi preload script)."""
        await self.request("initScript", source=source)

    async def goto(self, url: str, timeout_ms: int = 30000) -> None:
        await self.request("goto", url=url, timeout=timeout_ms)

    async def reload(self, timeout_ms: int = 30000) -> None:
        await self.request("reload", timeout=timeout_ms)

    async def evaluate(self, js: str, *args: Any) -> Any:
        """The value of expression `js`; with args, `js` is a function's source, called with them (JSON values)."""
        if args:
            return await self.request("evaluate", function=js, args=list(args))
        return await self.request("evaluate", expression=js)

    async def wait_for(self, js: str, *args: Any, timeout_ms: int = 30000, polling_ms: int = 100) -> Any:
        """Evaluate (as `evaluate` does) every `polling_ms` until truthy; its value, or DriverError after `timeout_ms`."""
        fields: dict[str, Any] = {"function": js, "args": list(args)} if args else {"expression": js}
        return await self.request("waitFor", timeout=timeout_ms, polling=polling_ms, timeout_s=timeout_ms / 1000 + 30, **fields)

    async def key_down(self, key: str) -> None:
        """Press a key and keep it down: a character (" " is the Space bar) or a name ("Enter", "Escape")."""
        await self.request("keyDown", key=key)

    async def key_up(self, key: str) -> None:
        await self.request("keyUp", key=key)

    async def press(self, key: str) -> None:
        await self.request("press", key=key)

    async def click(self, selector: str) -> None:
        """Click the middle of the first element matching `selector`, as a mouse would."""
        await self.request("click", selector=selector)

    async def type(self, selector: str, text: str) -> None:
        """Focus the element and type `text` a key at a time."""
        await self.request("type", selector=selector, text=text)

    async def close(self) -> None:
        """Close Firefox and let the driver exit."""
        if self.process.returncode is None:
            with contextlib.suppress(DriverError, TimeoutError, ConnectionError):
                await self.request("close", timeout_s=30)
            if self.process.stdin:
                self.process.stdin.close()
            try:
                await asyncio.wait_for(self.process.wait(), 30)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()
        await self._reader


@contextlib.asynccontextmanager
async def firefox(folder: Path, env: dict[str, str] | None = None) -> AsyncIterator[Firefox]:
    """Firefox ESR with a fresh profile in `folder`, `env` added to its environment (the sound server)."""
    folder.mkdir(parents=True, exist_ok=True)
    profile = folder / "profile"
    profile.mkdir()
    log = folder / "driver.log"
    options = json.dumps({"executablePath": FIREFOX, "profile": str(profile)})
    with log.open("wb") as stderr:
        process = await asyncio.create_subprocess_exec(
            "node",
            str(DRIVER),
            options,
            cwd=ROOT,
            env={**os.environ, "MOZ_CRASHREPORTER_DISABLE": "1", **(env or {})},
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=stderr,
            limit=16 * 1024 * 1024,
        )
    browser = Firefox(process, log)
    try:
        browser.version = await asyncio.wait_for(browser._ready, 90)
        yield browser
    finally:
        await browser.close()
        shutil.rmtree(profile, ignore_errors=True)  # ~40 MB; the driver's log stays


BENCH_READY = (
    "!!(window.parley && window.parley.pc && window.parley.status === 'ready' && window.__bench && window.__bench.hooked)"
)
"""The page is Ready and tests/support/browser_mic.py's microphone is hooked in."""

SAY_JS = "(i) => window.__bench.say(window.__bench.questions[i]).then((s) => s.ended).then(() => true)"
"""Play question i into the microphone; resolves once its last sample has played."""


@contextlib.asynccontextmanager
async def bench_page(url: str, folder: Path, question: str) -> AsyncIterator[Firefox]:
    """The page at `url` in Firefox ESR (its own sound server under `folder`) with
    tests/support/browser_mic.py's microphone, silent until SAY_JS plays `question` (hibari), Ready;
    on the way out, fails if the page raised."""
    from tests.support.browser_mic import INIT_JS, encode
    from tests.support.speech import speak, trim

    with pulse_server(folder / "pulse") as sound:
        async with firefox(folder, sound) as browser:
            await browser.init_script(INIT_JS)
            await browser.goto(url)
            try:
                await browser.wait_for(BENCH_READY, timeout_ms=45000)
            except DriverError as failed:
                status = await browser.evaluate("document.getElementById('status')?.textContent")
                raise AssertionError(f"{failed}; status {status!r}; console {browser.console[-10:]}") from None
            await browser.evaluate("(list) => window.__bench.load(list)", [encode(trim(speak(question, rate=48000)))])
            yield browser
            assert not browser.errors, f"the page raised: {browser.errors}"
