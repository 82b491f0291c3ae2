"""The test suite's browser stand-in is Parley's own client (parley/tools/client.py), which the load client uses too."""

from parley.tools.client import FRAME, RATE, Heard, ParleyClient, SpeakingMic

__all__ = ["FRAME", "RATE", "Heard", "ParleyClient", "SpeakingMic"]
