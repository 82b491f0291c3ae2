"""The load client operators point at a deployment (`python -m parley.tools.load`), against the real app."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import ROOT
from tests.support.network import loopback_only

KEYS = {"sessions", "connected", "turns_ok", "turns_failed", "first_audio_ms_p50", "first_audio_ms_p95", "gap_ms_p99"}


def load(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "parley.tools.load", *args]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def test_it_refuses_a_host_that_is_not_loopback_without_the_flag() -> None:
    done = load("--url", "http://192.0.2.1:8080/", "--sessions", "1", timeout=30)  # TEST-NET-1: nobody's host
    assert done.returncode == 2
    assert "not a loopback address" in done.stderr and "--i-own-this-host" in done.stderr


def test_it_refuses_loads_beyond_its_bounds() -> None:
    done = load("--url", "http://127.0.0.1:9/", "--sessions", "100000", timeout=30)
    assert done.returncode == 2 and "bounds" in done.stderr


@pytest.mark.serve
@pytest.mark.skipif(not loopback_only(), reason="needs a loopback-only network namespace (run scripts/test.sh as root)")
def test_three_sessions_two_turns_each_all_complete(serve_app, tmp_path: Path) -> None:
    out = tmp_path / "load.json"
    done = load("--url", serve_app.url, "--sessions", "3", "--turns", "2", "--seconds", "30", "--json", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "turns completed / failed" in done.stdout
    numbers = json.loads(out.read_text())
    assert KEYS | {"gaps_over_40ms_share"} <= numbers.keys()
    assert (numbers["sessions"], numbers["connected"], numbers["turns_ok"], numbers["turns_failed"]) == (3, 3, 6, 0)
    assert numbers["dropped"] == 0
    assert 0 < numbers["first_audio_ms_p50"] <= numbers["first_audio_ms_p95"] < 30_000
    assert 15 <= numbers["gap_ms_p50"] <= 25, "packets come every 20 ms"
    assert 0 < numbers["gap_ms_p99"] < 1000
    # p99 is the gap 99 % of the gaps stay within: it is over 40 ms exactly when over 1 % of the gaps
    # are (both numbers are rounded, so at 40 ms and 1 % themselves either may hold)
    p99, share = numbers["gap_ms_p99"], numbers["gaps_over_40ms_share"]
    assert (p99 >= 40 or share <= 0.01) and (p99 <= 40 or share >= 0.01), (p99, share)
