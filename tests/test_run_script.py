"""scripts/run.sh and serve_app.py's console.

- On a host where a stage cannot start: two plain lines and a non-zero exit. A real start: the
  script, serve_app.py and a local Ray of its own (in a temp dir of its own, so the test session's
  Ray is untouched), with the LLM pointed at a file that does not exist.
- A quiet console: of what Ray forwards from the workers only Parley's own lines are printed, and
  `--verbose` (listed by --help) prints everything. No Ray is started for these.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import ROOT
from tests.support.network import free_port


@pytest.fixture
def ray_tmp() -> Iterator[str]:
    # short: Ray's unix socket paths live under it and must stay under 107 characters
    folder = tempfile.mkdtemp(prefix="prlrun-", dir="/tmp")
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.serve
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


def test_serve_app_help_lists_verbose() -> None:
    done = subprocess.run([sys.executable, "serve_app.py", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "--verbose" in done.stdout and "Ray's log files" in " ".join(done.stdout.split())


def test_the_quiet_console_prints_only_parleys_lines_of_what_the_workers_write() -> None:
    from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher

    import serve_app
    from parley.logs import setup_logging

    setup_logging()
    formatter = logging.getLogger("parley").handlers[0].formatter
    assert formatter is not None
    record = logging.LogRecord("parley.server", logging.INFO, __file__, 1, "Parley is serving http://127.0.0.1:8080/", None, None)
    parley_line = formatter.format(record)
    access_line = "INFO 2026-12-06 20:29:58,549 parley_ASR 7hizqn50 4deb380e -- CALL transcribe OK 143.0ms"
    printed: list[dict[str, object]] = []
    # A local Ray started by another test of this run has its own printers here: set them aside,
    # so the filter wraps only this test's, and put them back after.
    ray_handlers = list(dispatcher.handlers)
    dispatcher.handlers = []
    dispatcher.add_handler("ray_print_logs", printed.append)
    try:
        serve_app._print_only_parley_lines()
        dispatcher.emit({"pid": 7, "is_err": True, "lines": [access_line, parley_line, "Traceback (most recent call last):"]})
        dispatcher.emit({"pid": 8, "is_err": False, "lines": [access_line]})
        dispatcher.emit({"pid": "raylet", "is_err": True, "lines": ["Ray killed this worker: the node ran low on memory."]})
    finally:
        dispatcher.handlers = ray_handlers
    assert [batch["lines"] for batch in printed] == [[parley_line], ["Ray killed this worker: the node ran low on memory."]]
