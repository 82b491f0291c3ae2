"""One ingress process for the page tests, to be killed with SIGKILL like a crashed server.

    python -m tests.support.page_server CONFIG_JSON

CONFIG_JSON is a ParleyConfig as JSON (the LLM and speech pointed at the test's fake OpenAI). It
prints "serving" once the port is open, then serves until killed.
"""

from __future__ import annotations

import asyncio
import sys

from parley.config import ParleyConfig
from tests.support.ingress import local_ingress


async def main(config: ParleyConfig) -> None:
    ingress = local_ingress(config)
    await ingress.start()
    print("serving", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(ParleyConfig.model_validate_json(sys.argv[1])))
