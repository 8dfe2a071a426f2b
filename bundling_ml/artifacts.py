"""Save and load a trained model: ``model.keras`` + ``metadata.json``.

Writes go to a temporary sibling directory that is then moved into place
with ``os.replace``, so readers never see a half-written artifact. If the
target directory exists it is first renamed aside and deleted after the
swap.
"""
from __future__ import annotations

import json
import os
import platform
import shutil
import tempfile
from pathlib import Path

MODEL_FILE = "model.keras"
METADATA_FILE = "metadata.json"
FORMAT_VERSION = 1


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

    Raises:
        TypeError: if ``metadata`` is not JSON-serialisable (nothing is
            written in that case).
    """
    artifact_dir = Path(artifact_dir)
    meta = dict(metadata)
    meta.setdefault("format_version", FORMAT_VERSION)
    meta.setdefault("library_versions", library_versions())
    text = json.dumps(meta, indent=2, sort_keys=True, default=_json_default)
    artifact_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{artifact_dir.name}.tmp-", dir=artifact_dir.parent))
    try:
        model.save(tmp / MODEL_FILE)
        for name, extra in (extra_models or {}).items():
            extra.save(tmp / name)
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
        FileNotFoundError: if ``model.keras`` or ``metadata.json`` is missing.
    """
    import keras

    artifact_dir = Path(artifact_dir)
    path = artifact_dir / MODEL_FILE
    if not path.exists():
        raise FileNotFoundError(path)
    meta = load_metadata(artifact_dir)
    return keras.models.load_model(path, compile=False), meta


def load_extra_model(artifact_dir, name: str):
    """Load an extra model saved with ``save_model(..., extra_models=...)``;
    None when the file is absent."""
    import keras

    path = Path(artifact_dir) / name
    return keras.models.load_model(path, compile=False) if path.exists() else None


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
