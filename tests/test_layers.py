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
    "parley/policy.py",
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


def engine_graph() -> dict[str, set[str]]:
    """Which engine module imports which (typing-only imports included; `from parley.engine import x`
    counts as importing `parley.engine.x`)."""
    modules = {f"parley.engine.{p.stem}": p for p in files("parley/engine") if p.stem != "__init__"}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        found: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                found.add(node.module)
                found.update(f"{node.module}.{alias.name}" for alias in node.names)
        graph[name] = {m for m in found if m in modules and m != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    found: list[list[str]] = []
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for after in sorted(graph[node]):
            if state.get(after) == 1:
                found.append([*path[path.index(after) :], after])
            elif after not in state:
                visit(after)
        path.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return found


def test_the_cycle_finder_finds_a_circle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c", "a"]]


def test_no_import_circle_inside_the_engine_typing_imports_included() -> None:
    """The coordinator (`session`, `coordinator`) imports its parts; no part imports it back, not even
    for typing: parts report upward by posting events (`parley.engine.events`)."""
    graph = engine_graph()
    assert "parley.engine.coordinator" in graph["parley.engine.session"]
    assert cycles(graph) == []
    for part, imports in graph.items():
        if part not in ("parley.engine.session", "parley.engine.coordinator"):
            assert not imports & {"parley.engine.session", "parley.engine.coordinator"}, part


def test_the_engine_has_its_own_settings_and_imports_no_config() -> None:
    assert offending(files("parley/engine"), {"parley.config", "parley.policy"}) == {}
