"""The page tests' server and helpers: the ingress in-process (or in a process of its own, to kill)
on the OpenAI backend pointed at the loopback fake, and what a person does and sees on the page."""

from __future__ import annotations

import asyncio
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from parley.config import ParleyConfig
from parley.ingress.server import IngressServer
from tests.support import ROOT
from tests.support.chromium import until
from tests.support.fake_openai import FakeOpenAI
from tests.support.ingress import local_ingress

SHOTS = ROOT / "test-output" / "page"
AXE = ROOT / "node_modules" / "axe-core" / "axe.min.js"
DESKTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
SMALL_PHONE = {"width": 320, "height": 568}
CODE_ANSWER = ["Here is the fix:\n\n", "```python\nprint('hello')\n", "```\n\n", "Run it with **python** now."]


@dataclass
class Server:
    """The ingress on a fixed port; restart() brings up a new process's worth of server there."""

    fake: FakeOpenAI
    port: int
    store: str
    state_dir: Path
    ingress: IngressServer | None = None
    process: asyncio.subprocess.Process | None = None

    def config(self) -> ParleyConfig:
        key = {"base_url": self.fake.base_url, "api_key_env": "PARLEY_TEST_KEY", "max_retries": 0}
        return ParleyConfig.model_validate(
            {
                "server": {
                    "host": "127.0.0.1",
                    "port": self.port,
                    "store": self.store,
                    "state_dir": str(self.state_dir),
                },
                "webrtc": {"ice_addresses": ["127.0.0.1"]},
                "llm": {"backend": "openai", **key},
                "tts": {"backend": "openai", **key},
                "limits": {"turns_per_minute": 200},
            }
        )

    async def start(self) -> None:
        config = self.config()
        self.ingress = local_ingress(config)
        await self.ingress.start()

    async def stop(self) -> None:
        if self.ingress is not None:
            await self.ingress.stop()
            self.ingress = None
        if self.process is not None:
            if self.process.returncode is None:
                self.process.kill()
            await self.process.wait()
            self.process = None

    async def spawn(self) -> None:
        """The same server in a process of its own (tests.support.page_server), for kill()."""
        self.process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.support.page_server",
            self.config().model_dump_json(),
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
        )
        assert self.process.stdout is not None
        line = await asyncio.wait_for(self.process.stdout.readline(), 60)
        assert line.strip() == b"serving", line

    def kill(self) -> None:
        """SIGKILL, like a crash: no goodbye to any socket or peer."""
        assert self.process is not None
        self.process.kill()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"


async def type_and_send(page: Any, text: str) -> None:
    await page.fill("#text-input", text)
    await page.press("#text-input", "Enter")


async def answered(page: Any, count: int, timeout_ms: int = 30000) -> Any:
    """The count-th assistant message, once it is finished."""
    selector = f'#chat .msg[data-role="assistant"]:not(.lost) >> nth={count - 1}'
    await until(
        page,
        f"""() => [...document.querySelectorAll('#chat .msg[data-role="assistant"]:not(.lost)')]
              .filter(m => m.dataset.state !== 'streaming').length >= {count}""",
        timeout_ms,
    )
    return page.locator(selector)


def words(content: str | list[dict[str, Any]]) -> str:
    """The text of a chat message's content (which may hold the camera's picture too)."""
    return content if isinstance(content, str) else " ".join(p["text"] for p in content if p["type"] == "text")


def spoken_texts(fake: FakeOpenAI) -> list[str]:
    return [str(body["input"]) for body in fake.bodies("/v1/audio/speech")]
