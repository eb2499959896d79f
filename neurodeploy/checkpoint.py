"""Training checkpoints: one file, written atomically, loaded without pickle.

A checkpoint is a ``torch.save`` dictionary of tensors, numbers and strings.
It is read with ``torch.load(weights_only=True)``, which rebuilds only those
types and never runs code from the file. The spec, tokenizer and metrics are
stored as JSON strings.
"""

from __future__ import annotations

import json
import os
import pickle
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch

from .data import tokenizer_from_dict
from .errors import NeurodeployError
from .spec import Spec

FORMAT = "neurodeploy-checkpoint"
FORMAT_VERSION = 1
CHECKPOINT_NAME = "checkpoint.pt"
UNREADABLE = (pickle.UnpicklingError, RuntimeError, EOFError,
              zipfile.BadZipFile, OSError, KeyError, IndexError, ValueError,
              TypeError, AttributeError)


def save_checkpoint(path: Path, *, spec: Spec, tokenizer, model_state: dict,
                    optimizer_state: dict, step: int, metrics: dict,
                    chars_per_token: float) -> None:
    """Write a checkpoint atomically: a temporary file, fsync, rename."""
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "spec": json.dumps(spec.to_dict()),
        "tokenizer": json.dumps(tokenizer.to_dict()),
        "model": model_state,
        "optimizer": optimizer_state,
        "step": step,
        "metrics": json.dumps(metrics),
        "chars_per_token": chars_per_token,
    }
    write_atomic(path, lambda handle: torch.save(payload, handle))


def write_atomic(path: Path, write) -> None:
    """Call ``write(handle)`` on a temporary file, then rename it to path.

    A crash leaves either the old file or the new one, never a partial file.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(dir=path.parent,
                                         prefix=f".{path.name}.")
    except OSError as error:
        raise NeurodeployError(
            f"cannot write {path}: {error.strerror}; choose a writable "
            "folder") from error
    try:
        # mkstemp creates mode 0600; give the file the usual umask mode.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)
        with os.fdopen(fd, "w+b") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load and validate a checkpoint; decode spec, tokenizer and metrics."""
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise NeurodeployError(
            f"checkpoint not found: {path}; train first with "
            "'neurodeploy train --out DIR'"
        )
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except UNREADABLE as error:
        # torch 2.3's weights-only unpickler raises assorted errors on
        # foreign bytes; none of their messages helps the user here.
        raise NeurodeployError(
            f"{path} is not a neurodeploy checkpoint or is corrupt: it "
            f"cannot be read as a weights-only PyTorch file "
            f"({type(error).__name__}); give the checkpoint.pt written by "
            "'neurodeploy train'"
        ) from error

    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise NeurodeployError(f"{path} is not a neurodeploy checkpoint")
    version = payload.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise NeurodeployError(
            f"{path} has checkpoint format version {version}, newer than "
            f"this neurodeploy supports ({FORMAT_VERSION}); upgrade "
            "neurodeploy to read it"
        )

    required = ("spec", "tokenizer", "model", "optimizer", "step", "metrics",
                "chars_per_token")
    missing = [key for key in required if key not in payload]
    if missing:
        raise NeurodeployError(f"{path} is missing fields {missing}")

    try:
        payload["spec"] = Spec.from_dict(json.loads(payload["spec"]),
                                         f"{path} spec")
        payload["tokenizer"] = tokenizer_from_dict(
            json.loads(payload["tokenizer"]))
        payload["metrics"] = json.loads(payload["metrics"])
    except (json.JSONDecodeError, TypeError) as error:
        raise NeurodeployError(f"{path} has a corrupt header: {error}") \
            from error
    payload["path"] = path
    return payload
