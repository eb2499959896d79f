"""The trainer: determinism, resume, checkpoints and their validation."""

import json

import pytest
import torch

from neurodeploy import checkpoint
from neurodeploy.errors import NeurodeployError
from neurodeploy.spec import apply_overrides
from neurodeploy.train import learning_rate, train


def states_equal(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_summary_fields(tiny_spec, corpus_file, tmp_path):
    summary = train(tiny_spec, str(corpus_file), tmp_path / "run",
                    progress=False)
    for key in ("val_loss", "val_bpc", "val_accuracy", "tokens_per_second",
                "checkpoint"):
        assert key in summary
    assert summary["tokens_per_second"] > 0
    assert 0 <= summary["val_accuracy"] <= 1
    assert summary["val_bpc"] == pytest.approx(
        summary["val_loss"] / torch.log(torch.tensor(2.0)).item())


def test_training_lowers_loss(tiny_spec, corpus_file, tmp_path):
    spec = apply_overrides(tiny_spec, ["steps=40", "eval_interval=40",
                                       "eval_batches=4", "batch_size=8",
                                       "learning_rate=0.01"])
    summary = train(spec, str(corpus_file), tmp_path / "run", progress=False)
    vocab = len(set(corpus_file.read_text()))
    uniform_bpc = torch.log2(torch.tensor(float(vocab))).item()
    assert summary["val_bpc"] < uniform_bpc - 0.5


def test_same_seed_same_weights(tiny_spec, corpus_file, tmp_path):
    train(tiny_spec, str(corpus_file), tmp_path / "a", progress=False)
    train(tiny_spec, str(corpus_file), tmp_path / "b", progress=False)
    a = checkpoint.load_checkpoint(tmp_path / "a")
    b = checkpoint.load_checkpoint(tmp_path / "b")
    assert states_equal(a["model"], b["model"])


def test_other_seed_other_weights(tiny_spec, corpus_file, tmp_path):
    other = apply_overrides(tiny_spec, ["seed=1"])
    train(tiny_spec, str(corpus_file), tmp_path / "a", progress=False)
    train(other, str(corpus_file), tmp_path / "b", progress=False)
    a = checkpoint.load_checkpoint(tmp_path / "a")
    b = checkpoint.load_checkpoint(tmp_path / "b")
    assert not states_equal(a["model"], b["model"])


@pytest.mark.parametrize("arch", ["snn", "ann"])
def test_resume_equals_uninterrupted_run(tiny_spec, corpus_file, tmp_path,
                                         arch):
    full = apply_overrides(tiny_spec, [f"arch='{arch}'", "steps=6",
                                       "dropout=0.1"])
    train(full, str(corpus_file), tmp_path / "full", progress=False)
    # Killed after step 5: the last checkpoint is the one of step 4.
    train(full, str(corpus_file), tmp_path / "split", progress=False,
          stop_after=5)
    summary = train(full, str(corpus_file), tmp_path / "split", resume=True,
                    progress=False)

    assert summary["resumed_from"] == 4
    a = checkpoint.load_checkpoint(tmp_path / "full")
    b = checkpoint.load_checkpoint(tmp_path / "split")
    assert b["step"] == 6
    assert states_equal(a["model"], b["model"])
    assert a["metrics"]["history"][-1] == b["metrics"]["history"][-1]


def test_resume_without_checkpoint(tiny_spec, corpus_file, tmp_path):
    with pytest.raises(NeurodeployError, match="no checkpoint"):
        train(tiny_spec, str(corpus_file), tmp_path, resume=True,
              progress=False)


def test_resume_from_other_model(tiny_spec, corpus_file, tmp_path):
    train(tiny_spec, str(corpus_file), tmp_path, progress=False)
    before = (tmp_path / "checkpoint.pt").read_bytes()
    other = apply_overrides(tiny_spec, ["d_model=64", "steps=8"])
    with pytest.raises(NeurodeployError, match="another model.*d_model"):
        train(other, str(corpus_file), tmp_path, resume=True, progress=False)
    assert (tmp_path / "checkpoint.pt").read_bytes() == before


def test_checkpoint_loads_without_pickle(tiny_spec, corpus_file, tmp_path):
    train(tiny_spec, str(corpus_file), tmp_path, progress=False)
    payload = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert payload["format_version"] == checkpoint.FORMAT_VERSION
    assert json.loads(payload["spec"])["model"]["d_model"] == 32
    assert json.loads(payload["tokenizer"])["kind"] == "char"


def rewrite(path, **changes):
    payload = torch.load(path, weights_only=True)
    payload.update(changes)
    torch.save(payload, path)


def test_newer_checkpoint_version(tiny_spec, corpus_file, tmp_path):
    train(tiny_spec, str(corpus_file), tmp_path, progress=False)
    rewrite(tmp_path / "checkpoint.pt", format_version=99)
    with pytest.raises(NeurodeployError, match="version 99, newer"):
        checkpoint.load_checkpoint(tmp_path / "checkpoint.pt")


def test_foreign_file_as_checkpoint(tmp_path):
    path = tmp_path / "checkpoint.pt"
    path.write_text("not a checkpoint")
    with pytest.raises(NeurodeployError, match="not a neurodeploy checkpoint"):
        checkpoint.load_checkpoint(path)


def test_pickled_object_is_rejected(tmp_path):
    path = tmp_path / "checkpoint.pt"
    torch.save({"format": object()}, path)
    with pytest.raises(NeurodeployError, match="corrupt"):
        checkpoint.load_checkpoint(path)


def test_truncated_checkpoint(tiny_spec, corpus_file, tmp_path):
    train(tiny_spec, str(corpus_file), tmp_path, progress=False)
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(NeurodeployError, match="corrupt"):
        checkpoint.load_checkpoint(path)


def test_failed_write_keeps_old_file(tmp_path):
    path = tmp_path / "file.bin"
    path.write_bytes(b"old")

    def broken(handle):
        handle.write(b"partial")
        raise OSError("disk full")

    with pytest.raises(OSError):
        checkpoint.write_atomic(path, broken)
    assert path.read_bytes() == b"old"
    assert list(tmp_path.iterdir()) == [path]


def test_learning_rate_schedule(tiny_spec):
    spec = apply_overrides(tiny_spec, ["steps=100", "warmup_steps=10",
                                       "learning_rate=1.0",
                                       "min_learning_rate=0.1"])
    assert learning_rate(0, spec) == pytest.approx(0.1)
    assert learning_rate(9, spec) == pytest.approx(1.0)
    assert learning_rate(55, spec) == pytest.approx(0.55)
    assert learning_rate(100, spec) == pytest.approx(0.1)


def test_unwritable_out_fails_before_training(tiny_spec, corpus_file,
                                              tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(NeurodeployError, match="cannot write"):
        train(tiny_spec, str(corpus_file), blocker / "run", progress=False)


@pytest.mark.parametrize("content", [b"", b"plain text notes\n"],
                         ids=["empty", "text"])
def test_non_checkpoint_files_rejected(tmp_path, content):
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(content)
    with pytest.raises(NeurodeployError, match="not a neurodeploy checkpoint"):
        checkpoint.load_checkpoint(path)


def test_resume_with_other_seed(tiny_spec, corpus_file, tmp_path):
    train(tiny_spec, str(corpus_file), tmp_path, progress=False,
          stop_after=2)
    other = apply_overrides(tiny_spec, ["seed=5"])
    with pytest.raises(NeurodeployError, match="pass --seed 0"):
        train(other, str(corpus_file), tmp_path, resume=True, progress=False)


def test_resume_with_other_training_settings(tiny_spec, corpus_file,
                                              tmp_path):
    train(tiny_spec, str(corpus_file), tmp_path, progress=False,
          stop_after=2)
    other = apply_overrides(tiny_spec, ["learning_rate=0.005"])
    with pytest.raises(NeurodeployError,
                       match="learning_rate: checkpoint .*requested 0.005"):
        train(other, str(corpus_file), tmp_path, resume=True, progress=False)


def test_resume_with_more_steps_warns(tiny_spec, corpus_file, tmp_path,
                                      caplog):
    train(tiny_spec, str(corpus_file), tmp_path, progress=False,
          stop_after=2)
    longer = apply_overrides(tiny_spec, [f"steps={tiny_spec.train.steps + 2}",
                                         "eval_interval=1"])

    summary = train(longer, str(corpus_file), tmp_path, resume=True,
                    progress=False)

    assert summary["resumed_from"] == 2
    assert "differs from an uninterrupted run" in caplog.text


def test_resume_with_other_corpus(tiny_spec, corpus_file, tmp_path):
    train(tiny_spec, str(corpus_file), tmp_path / "run", progress=False,
          stop_after=2)
    other = tmp_path / "other.txt"
    other.write_text(corpus_file.read_text()[::-1])
    with pytest.raises(NeurodeployError, match="another corpus"):
        train(tiny_spec, str(other), tmp_path / "run", resume=True,
              progress=False)


def test_rate_penalty_lowers_firing(tiny_spec, corpus_file, tmp_path):
    from neurodeploy.export import load_trained
    from neurodeploy.train import firing_rate

    rates = []
    for penalty in (0.0, 5.0):
        spec = apply_overrides(tiny_spec, [f"rate_penalty={penalty}",
                                           "steps=20", "learning_rate=0.01",
                                           "threshold=0.5"])
        out = tmp_path / f"penalty{penalty}"
        train(spec, str(corpus_file), out, progress=False)
        _, model = load_trained(out / "checkpoint.pt")
        model.train()
        model(torch.randint(0, 20, (4, 16),
                            generator=torch.Generator().manual_seed(0)))
        rates.append(firing_rate(model).item())
    assert rates[1] < rates[0]


def test_attention_over_memory_rejected(tiny_spec, corpus_file, tmp_path,
                                        monkeypatch):
    from neurodeploy import train as trainer

    monkeypatch.setattr(trainer, "_free_memory", lambda device: 2**14)
    with pytest.raises(NeurodeployError,
                       match=r"batch_size=4 and context=16 need about .*MiB"
                             r".*; context=6 or less fits with batch_size=4"):
        train(tiny_spec, str(corpus_file), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_step_out_of_memory_keeps_checkpoint(tiny_spec, corpus_file,
                                             tmp_path, monkeypatch):
    from neurodeploy import train as trainer

    train(tiny_spec, str(corpus_file), tmp_path, progress=False,
          stop_after=2)
    before = (tmp_path / "checkpoint.pt").read_bytes()

    def allocation_fails(self, step):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:114] "
                           "DefaultCPUAllocator: can't allocate memory: you "
                           "tried to allocate 1099511627776 bytes.")

    monkeypatch.setattr(trainer._Run, "step", allocation_fails)
    with pytest.raises(NeurodeployError,
                       match=r"out of memory .*batch_size=\d+ x context="
                             r"\d+.*intact"):
        train(tiny_spec, str(corpus_file), tmp_path, resume=True,
              progress=False)
    assert (tmp_path / "checkpoint.pt").read_bytes() == before
