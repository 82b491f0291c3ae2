"""What the tests (and the benchmarks) share: fakes, helpers and stand-ins, no tests.

Invariant: nothing here imports a test module or tests.conftest, and a test module imports other
code only from here (or the application); conftest.py holds only fixtures.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
"""The repository's root."""
