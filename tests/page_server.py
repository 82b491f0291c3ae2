"""One ingress process for the page tests, to be killed with SIGKILL like a crashed server.

    python -m tests.page_server CONFIG_JSON

CONFIG_JSON is a ParleyConfig as JSON (the LLM and speech pointed at the test's fake OpenAI). It
prints "serving" once the port is open, then serves until killed.
"""

from __future__ import annotations

import asyncio
import sys

from deployments.asr import ASR
from deployments.llm import LLM
from deployments.tts import TTS
from parley.config import ParleyConfig
from parley.server import IngressServer
from parley.services import LocalServices


async def main(config: ParleyConfig) -> None:
    ingress = IngressServer(config, LocalServices(ASR(config.asr), LLM(config.llm), TTS(config.tts)))
    await ingress.start()
    print("serving", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(ParleyConfig.model_validate_json(sys.argv[1])))
