"""scripts/run.sh on a host where a stage cannot start: two plain lines and a non-zero exit.

A real start: the script, serve_app.py and a local Ray of its own (in a temp dir of its own, so
the test session's Ray is untouched), with the LLM pointed at a file that does not exist.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import ROOT
from tests.support.network import free_port

pytestmark = pytest.mark.serve


@pytest.fixture
def ray_tmp() -> Iterator[str]:
    # short: Ray's unix socket paths live under it and must stay under 107 characters
    folder = tempfile.mkdtemp(prefix="prlrun-", dir="/tmp")
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_run_sh_names_the_stage_and_the_reason_when_the_llm_model_is_missing(ray_tmp: str, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model.gguf"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env |= {"RAY_TMPDIR": ray_tmp, "RAY_AUTH_MODE": "disabled"}
    done = subprocess.run(
        [
            str(ROOT / "scripts/run.sh"),
            "--llm-model-path",
            str(missing),
            "--port",
            str(free_port()),
            "--no-serve-include-dashboard",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 1, f"exit {done.returncode}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    lines = done.stderr.strip().splitlines()[-2:]
    assert lines[0] == f"parley: the LLM (language model) could not start: a file it needs is missing: {missing}.", lines
    assert lines[1].startswith("parley: details in "), lines
    log = lines[1].removeprefix("parley: details in ")
    assert Path(log).is_file() and str(missing) in Path(log).read_text(errors="replace"), "the log named has the details"
    assert "Parley is ready" not in done.stdout
