"""Shared fixtures: a tiny spec and small corpora written to tmp_path."""

import importlib.resources

import pytest

from neurodeploy.spec import Spec, apply_overrides

TINY = [
    "context=16", "d_model=32", "d_position=8", "n_layers=1", "n_heads=2",
    "d_mlp=32", "time_steps=4", "steps=4", "batch_size=4",
    "eval_interval=2", "eval_batches=1", "checkpoint_interval=2",
    "warmup_steps=1",
]


@pytest.fixture
def tiny_spec() -> Spec:
    return apply_overrides(Spec(name="tiny"), TINY)


@pytest.fixture(scope="session")
def shakespeare() -> str:
    resource = importlib.resources.files("neurodeploy.corpora")
    return (resource / "tinyshakespeare.txt").read_text(encoding="utf-8")


@pytest.fixture
def corpus_file(tmp_path, shakespeare):
    path = tmp_path / "corpus.txt"
    path.write_text(shakespeare[:20000], encoding="utf-8")
    return path
