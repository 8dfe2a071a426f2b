"""Save and load a trained model: ``model.keras`` + ``metadata.json``.

Writes go to a temporary sibling directory that is then moved into place
with ``os.replace``, so readers never see a half-written artifact. If the
target directory exists it is first renamed aside and deleted after the
swap.

Integrity: ``metadata.json`` records the SHA-256 of every other file of the
artifact (``"checksums": {"algorithm": "sha256", "files": {name: hex}}``,
format version 2). :func:`verify_artifact` recomputes them; :func:`load_model`
and :func:`load_extra_model` verify before loading, so a truncated, bit-flipped
or partly copied artifact is refused with :class:`ArtifactCorruptError`
instead of being served. Artifacts of format version 1 (written before
checksums existed) load without the check.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import tempfile
from pathlib import Path

MODEL_FILE = "model.keras"
METADATA_FILE = "metadata.json"
FORMAT_VERSION = 2
CHECKSUM_ALGORITHM = "sha256"
_CHUNK = 1024 * 1024


class ArtifactCorruptError(ValueError):
    """A model artifact is missing files, has unreadable metadata, or a file's checksum does not match."""


def file_sha256(path) -> str:
    """Hex SHA-256 of a file's bytes (read in 1 MiB chunks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_checksums(directory) -> dict[str, str]:
    """``{relative posix path: sha256 hex}`` of every file under ``directory`` except ``metadata.json``."""
    directory = Path(directory)
    return {p.relative_to(directory).as_posix(): file_sha256(p)
            for p in sorted(directory.rglob("*")) if p.is_file() and p.name != METADATA_FILE}


def verify_artifact(artifact_dir) -> dict:
    """Check an artifact against the checksums recorded at save, without importing TensorFlow.

    Args:
        artifact_dir: directory written by :func:`save_model`.

    Returns:
        the metadata dict.

    Raises:
        ArtifactCorruptError: the directory or ``metadata.json`` is missing or
            unreadable, a format-2 artifact has no checksums, a recorded file
            is missing, or a file's SHA-256 differs from the recorded one
            (the message names the file and both digests).
    """
    artifact_dir = Path(artifact_dir)
    if not artifact_dir.is_dir():
        raise ArtifactCorruptError(f"model artifact {artifact_dir} does not exist.")
    try:
        meta = load_metadata(artifact_dir)
    except (OSError, ValueError) as exc:
        raise ArtifactCorruptError(f"model artifact {artifact_dir}: {METADATA_FILE} is missing or unreadable "
                                   f"({type(exc).__name__}: {exc}).") from exc
    if not isinstance(meta, dict):
        raise ArtifactCorruptError(f"model artifact {artifact_dir}: {METADATA_FILE} is not a JSON object.")
    recorded = meta.get("checksums")
    if recorded is None and int(meta.get("format_version", 1)) < 2:
        return meta  # written before checksums existed
    if not isinstance(recorded, dict) or recorded.get("algorithm") != CHECKSUM_ALGORITHM \
            or not isinstance(recorded.get("files"), dict) or MODEL_FILE not in recorded["files"]:
        raise ArtifactCorruptError(f"model artifact {artifact_dir}: {METADATA_FILE} has no valid "
                                   f"{CHECKSUM_ALGORITHM} checksums.")
    for name, expected in sorted(recorded["files"].items()):
        path = artifact_dir / name
        if not path.is_file():
            raise ArtifactCorruptError(f"model artifact {artifact_dir} is corrupt: {name} is missing.")
        actual = file_sha256(path)
        if actual != expected:
            raise ArtifactCorruptError(
                f"model artifact {artifact_dir} is corrupt: {name} has {CHECKSUM_ALGORITHM} {actual}, "
                f"but {expected} was recorded when it was saved. Retrain, or restore the artifact from a backup.")
    return meta


def library_versions() -> dict:
    """Versions of python, numpy, pandas, scipy, tensorflow, keras (str; "" if not installed)."""
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for name, dist in (("numpy", "numpy"), ("pandas", "pandas"), ("scipy", "scipy"), ("tensorflow", "tensorflow-cpu"), ("keras", "keras")):
        try:
            out[name] = md.version(dist)
        except md.PackageNotFoundError:
            try:
                out[name] = md.version(name)
            except md.PackageNotFoundError:
                out[name] = ""
    return out


def save_model(model, metadata: dict, artifact_dir, *, extra_models: dict | None = None) -> Path:
    """Atomically write ``model.keras`` and ``metadata.json`` into ``artifact_dir``.

    Args:
        model: a ``keras.Model``.
        metadata: JSON-serialisable dict; ``format_version`` and
            ``library_versions`` are added when missing.
        artifact_dir: target directory (created; replaced if it exists).
        extra_models: optional {file name ("shopper.keras"): keras.Model}
            saved next to ``model.keras`` (see :func:`load_extra_model`).

    Returns:
        Path of ``artifact_dir``.

    The SHA-256 of each model file is added to the metadata (``checksums``),
    and ``format_version`` is set to 2; :func:`verify_artifact` checks them.

    Raises:
        TypeError: if ``metadata`` is not JSON-serialisable (nothing is
            written in that case).
    """
    artifact_dir = Path(artifact_dir)
    meta = dict(metadata)
    meta["format_version"] = FORMAT_VERSION
    meta.setdefault("library_versions", library_versions())
    json.dumps(meta, default=_json_default)  # fail before writing anything
    artifact_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{artifact_dir.name}.tmp-", dir=artifact_dir.parent))
    try:
        model.save(tmp / MODEL_FILE)
        for name, extra in (extra_models or {}).items():
            extra.save(tmp / name)
        meta["checksums"] = {"algorithm": CHECKSUM_ALGORITHM, "files": file_checksums(tmp)}
        text = json.dumps(meta, indent=2, sort_keys=True, default=_json_default)
        (tmp / METADATA_FILE).write_text(text, encoding="utf-8")
        old = None
        if artifact_dir.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{artifact_dir.name}.old-", dir=artifact_dir.parent))
            os.replace(artifact_dir, old / "x")
        os.replace(tmp, artifact_dir)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return artifact_dir


def load_metadata(artifact_dir) -> dict:
    """Read ``metadata.json`` only (no TensorFlow import).

    Raises:
        FileNotFoundError: if the file is missing.
    """
    return json.loads((Path(artifact_dir) / METADATA_FILE).read_text(encoding="utf-8"))


def load_model(artifact_dir):
    """Load a saved model.

    Args:
        artifact_dir: directory written by :func:`save_model`.

    Returns:
        (keras_model, metadata dict).

    Raises:
        FileNotFoundError: if ``model.keras`` is missing.
        ArtifactCorruptError: if the artifact fails :func:`verify_artifact`.
    """
    import keras

    artifact_dir = Path(artifact_dir)
    path = artifact_dir / MODEL_FILE
    if not path.exists():
        raise FileNotFoundError(path)
    meta = verify_artifact(artifact_dir)
    return keras.models.load_model(path, compile=False), meta


def load_extra_model(artifact_dir, name: str):
    """Load an extra model saved with ``save_model(..., extra_models=...)``;
    None when the file is absent.

    Raises:
        ArtifactCorruptError: if the artifact fails :func:`verify_artifact`.
    """
    import keras

    path = Path(artifact_dir) / name
    if not path.exists():
        return None
    verify_artifact(artifact_dir)
    return keras.models.load_model(path, compile=False)


def _json_default(o):
    import numpy as np

    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON-serialisable: {type(o).__name__}")
