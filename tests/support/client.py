"""The test suite's browser stand-in is Parley's own client (parley/tools/client.py), which the load client uses too."""

from typing import Any

from parley.tools.client import FRAME, RATE, Heard, ParleyClient, SpeakingMic

__all__ = ["FRAME", "RATE", "Heard", "ParleyClient", "SpeakingMic", "connected"]


async def connected(url: str, **kwargs: Any) -> ParleyClient:
    """A client that has connected (without media) and been welcomed."""
    client = ParleyClient(url, **kwargs)
    assert "session_id" in await client.connect(media=False)
    return client
