"""The test suite's browser stand-in is Parley's own client (parley/client.py), which the load client uses too."""

from parley.client import FRAME, RATE, Heard, ParleyClient, SpeakingMic

__all__ = ["FRAME", "RATE", "Heard", "ParleyClient", "SpeakingMic"]
