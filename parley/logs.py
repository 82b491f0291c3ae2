"""Logging for Parley's own loggers (`parley.*`), in the driver and in every replica.

Invariant: set up once per process; lines go to stderr, which Ray forwards to the driver.
"""

from __future__ import annotations

import logging
import sys


def setup_logging(level: int = logging.INFO) -> None:
    """Give the `parley` logger a stderr handler unless it already has one."""
    logger = logging.getLogger("parley")
    if logger.handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
