"""Several ingress processes of a node start together: they must agree on the signing secret and on
the self-signed certificate, and what a crash left half-made is repaired.

Real processes (spawned, as Ray starts its workers) wait at a barrier, then all make the secret (or
the certificate) in the same fresh directory at once; each round uses a directory of its own, so one
start of the processes races many times. Every wait is bounded.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
from pathlib import Path
from typing import Any

import pytest

PROCESSES = 8
ROUNDS = 25
WAIT_S = 60.0


def _secrets(directories: list[str], barrier: Any, results: Any) -> None:
    """One ingress process's start-up, once per directory: its signing secret."""
    os.environ.pop("PARLEY_AUTH_SECRET", None)
    from parley.config import ParleyConfig
    from parley.ingress.auth import signing_secret

    configs = [ParleyConfig.model_validate({"server": {"state_dir": d}}) for d in directories]
    got = []
    for config in configs:
        barrier.wait(WAIT_S)
        got.append(signing_secret(config, create=True))
    results.put(got)


def _pairs(directories: list[str], barrier: Any, results: Any) -> None:
    """One ingress process's start-up, once per directory: its self-signed pair, loaded as the server does."""
    import hashlib
    import ssl

    from parley.ingress.tls import self_signed_pair

    got = []
    for directory in directories:
        barrier.wait(WAIT_S)
        try:
            cert, key = self_signed_pair(Path(directory), "0.0.0.0")
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
            got.append(hashlib.sha256(Path(cert).read_bytes()).hexdigest())
        except Exception as exc:  # a key that is not the certificate's, a half-written file
            got.append(f"failed: {exc!r}")
    results.put(got)


def _race(target: Any, directories: list[str]) -> list[list[Any]]:
    """Run `target` in PROCESSES spawned processes at once; each one's results, in order of directories."""
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(PROCESSES), context.Queue()
    processes = [context.Process(target=target, args=(directories, barrier, results), daemon=True) for _ in range(PROCESSES)]
    for p in processes:
        p.start()
    try:
        answers = [results.get(timeout=WAIT_S * 2) for _ in processes]
    except queue.Empty:
        pytest.fail("a start-up process did not finish in time (a lock never released?)")
    finally:
        for p in processes:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
    return [[answer[i] for answer in answers] for i in range(len(directories))]


def test_processes_starting_together_all_get_the_same_complete_secret(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PARLEY_AUTH_SECRET", raising=False)
    directories = [str(tmp_path / f"round-{i}") for i in range(ROUNDS)]
    for i, directory in enumerate(directories):
        if i % 5 == 4:  # a crash between creating the file and writing it, left from an earlier start
            Path(directory).mkdir()
            (Path(directory) / "auth.secret").write_bytes(b"")
    for directory, secrets in zip(directories, _race(_secrets, directories), strict=True):
        assert len(set(secrets)) == 1, f"{directory}: the processes got different secrets: {secrets}"
        assert secrets[0] and len(secrets[0]) >= 32, f"{directory}: an empty or short secret: {secrets[0]!r}"
        assert (Path(directory) / "auth.secret").read_bytes().strip() == secrets[0]
        assert os.stat(Path(directory) / "auth.secret").st_mode & 0o777 == 0o600


def test_processes_starting_together_all_serve_one_matching_certificate(tmp_path: Path) -> None:
    directories = [str(tmp_path / f"round-{i}") for i in range(ROUNDS)]
    for directory, fingerprints in zip(directories, _race(_pairs, directories), strict=True):
        assert not [f for f in fingerprints if f.startswith("failed")], f"{directory}: {fingerprints}"
        assert len(set(fingerprints)) == 1, f"{directory}: the processes serve different certificates"


def test_an_empty_or_short_secret_file_is_replaced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from parley.config import ParleyConfig
    from parley.ingress.auth import signing_secret

    monkeypatch.delenv("PARLEY_AUTH_SECRET", raising=False)
    config = ParleyConfig.model_validate({"server": {"state_dir": str(tmp_path)}})
    path = tmp_path / "auth.secret"
    for left in (b"", b"\n", b"0123abcd"):
        path.write_bytes(left)
        assert signing_secret(config, create=False) is None, "a half-made secret is no secret"
        made = signing_secret(config, create=True)
        assert made and len(made) >= 32 and path.read_bytes().strip() == made
        assert signing_secret(config, create=True) == made, "a good secret is kept"
    assert [p.name for p in tmp_path.iterdir()] == ["auth.secret"], "no temporary or lock files are left"


def test_a_key_that_is_not_the_certificates_is_replaced_by_a_matching_pair(tmp_path: Path) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    from parley.ingress.tls import self_signed_pair

    def public(cert: str, key: str) -> tuple[bytes, bytes]:
        raw = serialization.PublicFormat.SubjectPublicKeyInfo, serialization.Encoding.DER
        certified = x509.load_pem_x509_certificate(Path(cert).read_bytes()).public_key()
        private = serialization.load_pem_private_key(Path(key).read_bytes(), password=None).public_key()
        return certified.public_bytes(raw[1], raw[0]), private.public_bytes(raw[1], raw[0])

    cert, key = self_signed_pair(tmp_path / "a", "0.0.0.0")
    _, other_key = self_signed_pair(tmp_path / "b", "0.0.0.0")
    Path(key).write_bytes(Path(other_key).read_bytes())  # a crash between writing one start's key and its certificate
    cert, key = self_signed_pair(tmp_path / "a", "0.0.0.0")
    mine, its = public(cert, key)
    assert mine == its, "the key is the certificate's again"
    assert os.stat(key).st_mode & 0o777 == 0o600
    Path(key).write_bytes(b"")  # and a key left empty
    cert, key = self_signed_pair(tmp_path / "a", "0.0.0.0")
    mine, its = public(cert, key)
    assert mine == its
    kept = Path(cert).read_bytes()
    assert self_signed_pair(tmp_path / "a", "0.0.0.0") == (cert, key) and Path(cert).read_bytes() == kept, "a good pair is kept"
