"""The layering is kept by the code, not by habit: which package may import which.

- `media` (codecs, VAD, echo canceller, pacing track) imports nothing of `parley`.
- `parley.engine` (one browser's conversation) imports no web server, socket.io, aiortc or Ray,
  directly or through what it imports: it reaches its transport through `parley.engine.ports`.
- `parley.tools` (what operators run) is imported by none of the runtime packages.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

from tests.support import ROOT

TRANSPORT = {"aiohttp", "socketio", "engineio", "aiortc", "ray"}
RUNTIME = [
    "media",
    "deployments",
    "parley/engine",
    "parley/ingress",
    "parley/vision",
    "parley/config.py",
    "parley/logs.py",
    "parley/protocol.py",
]


def imports_of(path: Path) -> set[str]:
    """Every module named by an import statement in one file (relative imports resolved)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                found.add(".".join([*base, node.module or ""]).rstrip("."))
            elif node.module:
                found.add(node.module)
    return found


def files(*where: str) -> list[Path]:
    out: list[Path] = []
    for name in where:
        path = ROOT / name
        out.extend(sorted(path.rglob("*.py")) if path.is_dir() else [path])
    return out


def offending(paths: list[Path], forbidden: set[str]) -> dict[str, list[str]]:
    bad: dict[str, list[str]] = {}
    for path in paths:
        hits = sorted(m for m in imports_of(path) if any(m == f or m.startswith(f + ".") for f in forbidden))
        if hits:
            bad[str(path.relative_to(ROOT))] = hits
    return bad


def test_the_import_scanner_sees_what_a_file_imports(tmp_path: Path) -> None:
    assert {"parley.engine.ports", "aiortc", "media.track"} <= imports_of(ROOT / "parley/ingress/rtc.py")


def test_media_imports_nothing_of_parley() -> None:
    assert offending(files("media"), {"parley"}) == {}


def test_the_engine_imports_no_transport_directly() -> None:
    assert offending(files("parley/engine"), TRANSPORT | {"parley.ingress", "parley.tools"}) == {}


def test_the_engine_imports_no_transport_through_what_it_imports() -> None:
    """Imported for real, in a fresh interpreter: a transport module pulled in by anything the
    engine (or media, or the protocol) imports shows up in sys.modules."""
    code = (
        "import importlib, json, pkgutil, sys\n"
        "import parley.engine, parley.protocol\n"
        "for m in pkgutil.iter_modules(parley.engine.__path__): importlib.import_module('parley.engine.' + m.name)\n"
        f"bad = [m for m in sys.modules if m.split('.')[0] in {sorted(TRANSPORT)!r}]\n"
        "bad += [m for m in sys.modules if m.startswith(('parley.ingress', 'parley.tools'))]\n"
        "print(json.dumps(sorted(bad)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=240, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_no_runtime_package_imports_the_tools() -> None:
    assert offending(files(*RUNTIME), {"parley.tools"}) == {}
