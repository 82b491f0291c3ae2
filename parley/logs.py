"""Logging for Parley's own loggers (`parley.*`), in the driver and in every replica.

Invariant: set up once per process; lines go to stderr, which Ray forwards to the driver.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager


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


@contextmanager
def starting(logger: logging.Logger) -> Iterator[None]:
    """Around a deployment's constructor: a failure is logged with its traceback to stderr (so the
    replica's own log file, which `parley.tools.startup` points users at, holds it), then re-raised."""
    try:
        yield
    except BaseException:
        logger.exception("could not start")
        raise
