"""The trainer: AdamW, warm-up and cosine decay, validation, checkpoints.

Every random draw of step ``i`` comes from generators seeded with
``(seed, i)``, so a run resumed from the checkpoint of step ``k`` repeats
the uninterrupted run exactly.

Two runs of one seed on one machine give the same weights bit for bit
(tested on small models; two 1500-step runs of the demo spec matched too).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from . import data, heap
from .checkpoint import (CHECKPOINT_NAME, load_checkpoint, save_checkpoint,
                         write_atomic)
from .errors import NeurodeployError
from .model import build_model
from .model.neuron import CubaLIF, compile_kernels
from .model.snn import compile_attention_kernels
from .spec import Spec

log = logging.getLogger(__name__)

EVAL_SEED = 1234  # same validation windows for every run and seed


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training, with the number of steps done (``step``).

    ``checkpoint_step`` is the step of the checkpoint at ``checkpoint``
    that ``--resume`` would continue from, or None when there is none."""

    def __init__(self, step: int, checkpoint_step: int | None,
                 checkpoint: Path):
        super().__init__(step, checkpoint_step, checkpoint)
        self.step = step
        self.checkpoint_step = checkpoint_step
        self.checkpoint = checkpoint


@dataclass
class Metrics:
    """Validation metrics; losses are per character, not per token."""

    val_loss: float
    val_bpc: float
    val_accuracy: float


def loss_unit(spec: Spec) -> str:
    """Return the text unit that losses are reported per: byte or char."""
    return "byte" if spec.model.tokenizer == "byte" else "char"


def learning_rate(step: int, spec: Spec) -> float:
    """Linear warm-up to ``learning_rate``, cosine decay to the minimum."""
    train = spec.train
    if step < train.warmup_steps:
        return train.learning_rate * (step + 1) / train.warmup_steps
    span = max(1, train.steps - train.warmup_steps)
    progress = min(1.0, (step - train.warmup_steps) / span)
    cosine = 0.5 * (1 + math.cos(math.pi * progress))
    return train.min_learning_rate + cosine * (
        train.learning_rate - train.min_learning_rate)


def make_optimizer(model: torch.nn.Module, spec: Spec):
    """AdamW with weight decay on matrices only (not norms or biases)."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": spec.train.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=spec.train.learning_rate,
                             betas=(0.9, 0.99))


@torch.no_grad()
def evaluate(model, corpus: data.Corpus, spec: Spec, device,
             progress: bool = False) -> Metrics:
    """Measure loss and accuracy on fixed random validation windows."""
    was_training = model.training
    model.eval()
    generator = torch.Generator().manual_seed(EVAL_SEED)
    total_loss, correct, count = 0.0, 0, 0
    batches = tqdm(range(spec.train.eval_batches), desc="validation",
                   unit="batch", leave=False, disable=not progress)
    for _ in batches:
        x, y = data.sample_batch(corpus.val, spec.model.context,
                                 spec.train.batch_size, generator)
        x, y = x.to(device), y.to(device)
        logits = model(x)
        total_loss += F.cross_entropy(
            logits.flatten(0, 1), y.flatten(), reduction="sum").item()
        correct += (logits.argmax(-1) == y).sum().item()
        count += y.numel()
    model.train(was_training)

    nats_per_char = total_loss / count / corpus.chars_per_token
    return Metrics(val_loss=nats_per_char,
                   val_bpc=nats_per_char / math.log(2),
                   val_accuracy=correct / count)


def firing_rate(model) -> torch.Tensor:
    """Mean firing rate over the spiking layers of the last training pass."""
    rates = [m.rate for m in model.modules()
             if isinstance(m, CubaLIF) and m.rate is not None]
    return torch.stack(rates).mean() if rates else torch.zeros(())


def _step_generators(seed: int, step: int) -> torch.Generator:
    """Seed the global RNG (dropout) and return the batch generator."""
    torch.manual_seed(seed * 1_000_003 + step)
    return torch.Generator().manual_seed(seed * 1_000_033 + step)


def train(spec: Spec, corpus_path: str | None, out_dir: str | Path,
          resume: bool = False, device: str = "cpu",
          progress: bool = True, stop_after: int | None = None) -> dict:
    """Train ``spec`` on a corpus; write ``out_dir/checkpoint.pt``.

    ``stop_after`` ends the loop after that step without a final
    checkpoint, as a killed run would end. Returns a summary with
    validation metrics, throughput and paths. On a CPU with glibc, the
    process keeps its peak heap from then on (``heap.keep_freed_memory``).
    """
    _check_memory(spec, device)
    # Before the corpus is loaded, because PyTorch reads the huge-page
    # setting at its first large allocation.
    if torch.device(device).type == "cpu" and heap.keep_freed_memory():
        log.debug("the heap keeps freed memory for the next step")
    out_dir = Path(out_dir)
    checkpoint_path = out_dir / CHECKPOINT_NAME
    # Fail before training, not at the first checkpoint.
    write_atomic(out_dir / ".write-test", lambda handle: None)
    (out_dir / ".write-test").unlink()
    state = _resume_state(checkpoint_path, spec) if resume else None

    text, raw = data.read_corpus(corpus_path, spec.model.tokenizer)
    corpus_digest = hashlib.sha256(raw).hexdigest()
    saved_digest = state["metrics"].get("corpus_sha256") if state else None
    if saved_digest not in (None, corpus_digest):
        raise NeurodeployError(
            f"cannot resume: {checkpoint_path} was trained on another corpus "
            "(its SHA-256 differs); pass the same --corpus")
    tokenizer = state["tokenizer"] if state else _new_tokenizer(spec, text)
    corpus = data.split_corpus(text, raw, tokenizer, spec.model.context,
                               spec.train.validation_fraction)
    log.info("corpus: %d training and %d validation tokens, vocabulary %d",
             len(corpus.train), len(corpus.val), tokenizer.vocab_size)

    torch.manual_seed(spec.train.seed)
    model = build_model(spec.model, tokenizer.vocab_size).to(device)
    optimizer = make_optimizer(model, spec)
    start, history = 0, []
    if state:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start, history = state["step"], state["metrics"].get("history", [])
        log.info("resumed from %s at step %d", checkpoint_path, start)

    parts = spec.model.not_deployable_parts()
    if spec.model.arch == "snn" and parts:
        log.warning("this model trains but cannot be exported to Lava: %s",
                    "; ".join(parts))
    n_params = sum(p.numel() for p in model.parameters())
    log.info("%s decoder %r: %d parameters, %d steps", spec.model.arch,
             spec.name, n_params, spec.train.steps)

    if spec.model.arch == "snn" and torch.device(device).type == "cpu":
        began = time.perf_counter()
        compile_kernels()
        compile_attention_kernels()
        log.info("neuron and attention kernels ready in %.1f s (compiled "
                 "on the first run, then loaded from numba's cache)",
                 time.perf_counter() - began)

    run = _Run(spec, model, optimizer, corpus, tokenizer, device,
               checkpoint_path, history, corpus_digest,
               saved_step=start if state else None)
    end = min(spec.train.steps, stop_after or spec.train.steps)
    if start >= end:
        log.info("%s is already at step %d of %d; nothing to train",
                 checkpoint_path, start, spec.train.steps)
    try:
        train_seconds = run.loop(start, end, progress)
    except RuntimeError as error:  # torch.cuda.OutOfMemoryError included
        if "can't allocate memory" not in str(error) \
                and "out of memory" not in str(error):
            raise
        raise NeurodeployError(
            f"out of memory in a training step of batch_size="
            f"{spec.train.batch_size} x context={spec.model.context} on "
            f"{device}: {str(error).splitlines()[0]}; lower batch_size, "
            f"context or d_model (--set batch_size=...); checkpoints "
            f"already written are intact") from None
    except KeyboardInterrupt:
        raise TrainingInterrupted(run.done, run.saved_step,
                                  checkpoint_path) from None
    metrics = history[-1] if history else dataclasses.asdict(
        evaluate(model, corpus, spec, device))

    tokens = (end - start) * spec.train.batch_size \
        * spec.model.context
    return {
        "model": spec.name,
        "arch": spec.model.arch,
        "steps": spec.train.steps,
        "resumed_from": start if resume else None,
        "parameters": n_params,
        **{k: metrics[k] for k in ("val_loss", "val_bpc", "val_accuracy")},
        "tokens_per_second": tokens / train_seconds if train_seconds else 0.0,
        "train_seconds": train_seconds,
        "checkpoint": str(checkpoint_path),
    }


def _check_memory(spec: Spec, device: str) -> None:
    """Reject a spiking model whose attention scores would not fit in the
    device's free memory, before anything is written.

    Every layer keeps its (batch, T, heads, context, context) float32
    scores for the backward pass, which needs two more such tensors for
    the layer it works on. This estimate leaves out the rest of the
    activations, small next to the scores once the context is long. For
    the demo spec at context 1024 and batch 64 it gives 17.2 GB, and two
    training steps peaked at 17.4 GB (maximum resident set size).
    """
    if spec.model.arch != "snn":
        return
    m = spec.model
    per_context2 = 4 * spec.train.batch_size * m.time_steps * m.n_heads \
        * (m.n_layers + 2)
    needed = per_context2 * m.context ** 2
    available = _free_memory(device)
    if needed <= available:
        return
    fits = math.isqrt(available // per_context2)
    fix = f"context={fits} or less fits with batch_size=" \
        f"{spec.train.batch_size}" if fits > 1 else "lower batch_size"
    raise NeurodeployError(
        f"batch_size={spec.train.batch_size} and context={m.context} need "
        f"about {_gib(needed)} for attention scores ({m.n_layers + 2} "
        f"float32 tensors of batch x T x heads x context^2: one per layer "
        f"and two for the backward pass), more than the {_gib(available)} "
        f"of free memory on {'this machine' if device == 'cpu' else device}"
        f"; {fix}")


def _gib(size: int) -> str:
    return f"{size / 2**30:.1f} GiB" if size >= 2**30 / 10 \
        else f"{size / 2**20:.2f} MiB"


def _free_memory(device: str) -> int:
    """Bytes of memory free for training on ``device``: the GPU's, or the
    machine's available RAM (its total where /proc/meminfo is missing)."""
    if torch.device(device).type == "cuda":
        free, _ = torch.cuda.mem_get_info(torch.device(device))
        return free
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _new_tokenizer(spec: Spec, text: str):
    if spec.model.tokenizer == "byte":
        return data.ByteTokenizer()
    return data.CharTokenizer.from_text(text)


# Training settings a resumed run may change. The seed has its own check
# and message. The others leave the trajectory alone, except steps, which
# changes the schedule's length and logs a warning.
RESUMABLE_CHANGES = ("seed", "steps", "eval_interval", "eval_batches",
                     "checkpoint_interval")


def _resume_state(checkpoint_path: Path, spec: Spec) -> dict:
    """Load a checkpoint to resume and check it belongs to ``spec``."""
    if not checkpoint_path.is_file():
        raise NeurodeployError(
            f"cannot resume: no checkpoint at {checkpoint_path}; run "
            "without --resume to start training"
        )
    state = load_checkpoint(checkpoint_path)
    saved = state["spec"]
    changed = _changed_fields(saved.model, spec.model)
    if changed:
        raise NeurodeployError(
            f"cannot resume: {checkpoint_path} was trained with another "
            f"model ({changed}); use the same --model, --arch and --set "
            "options, or a new --out folder"
        )
    changed = _changed_fields(saved.train, spec.train, RESUMABLE_CHANGES)
    if changed:
        raise NeurodeployError(
            f"cannot resume: {checkpoint_path} was trained with other "
            f"training settings ({changed}); use the same --set options, "
            "or a new --out folder"
        )
    if saved.train.seed != spec.train.seed:
        raise NeurodeployError(
            f"cannot resume: {checkpoint_path} was trained with seed "
            f"{saved.train.seed}, not {spec.train.seed}; pass --seed "
            f"{saved.train.seed} to continue the same run")
    if state["step"] > spec.train.steps:
        raise NeurodeployError(
            f"cannot resume: the checkpoint is at step {state['step']}, "
            f"beyond --steps {spec.train.steps}; pass a larger --steps"
        )
    if saved.train.steps != spec.train.steps:
        log.warning("resuming a run of %d steps as one of %d: the learning "
                    "rate now decays over the new length, so the result "
                    "differs from an uninterrupted run of either length",
                    saved.train.steps, spec.train.steps)
    return state


def _changed_fields(saved, requested, allowed=()) -> str:
    """Return the fields of two spec sections that differ, outside
    ``allowed``, as 'name: checkpoint X, requested Y' joined by '; '."""
    return "; ".join(
        f"{name}: checkpoint {value!r}, requested "
        f"{getattr(requested, name)!r}"
        for name, value in dataclasses.asdict(saved).items()
        if name not in allowed and getattr(requested, name) != value)


class _Run:
    """The mutable state of one training loop."""

    def __init__(self, spec, model, optimizer, corpus, tokenizer, device,
                 checkpoint_path, history, corpus_digest,
                 saved_step: int | None = None):
        self.spec, self.model, self.optimizer = spec, model, optimizer
        self.corpus, self.tokenizer, self.device = corpus, tokenizer, device
        self.checkpoint_path, self.history = checkpoint_path, history
        self.corpus_digest = corpus_digest
        self.done = 0  # steps completed, set by loop()
        self.saved_step = saved_step  # step of the checkpoint on disk
        self.progress = False  # whether to show progress bars, set by loop()

    def loop(self, start: int, end: int, progress: bool) -> float:
        """Run steps ``start .. end - 1``; return seconds spent training."""
        spec = self.spec.train
        tokens_per_step = spec.batch_size * self.spec.model.context
        bar = tqdm(range(start, end), initial=start, total=spec.steps,
                   disable=not progress, unit="step", dynamic_ncols=True)
        seconds = 0.0
        self.done, self.progress = start, progress
        self.model.train()
        # Log lines go through the bar, so they do not break it.
        with logging_redirect_tqdm():
            for step in bar:
                began = time.perf_counter()
                loss = self.step(step)
                seconds += time.perf_counter() - began
                done = self.done = step + 1
                rate = tokens_per_step * (done - start) / seconds
                bar.set_postfix(loss=f"{loss:.3f}", tok_s=f"{rate:.0f}")

                if done % spec.eval_interval == 0 or done == spec.steps:
                    self.validate(done)
                if done % spec.checkpoint_interval == 0 \
                        or done == spec.steps:
                    self.save(done)
        bar.close()
        return seconds

    def step(self, step: int) -> float:
        spec = self.spec
        generator = _step_generators(spec.train.seed, step)
        x, y = data.sample_batch(self.corpus.train, spec.model.context,
                                 spec.train.batch_size, generator)
        x, y = x.to(self.device), y.to(self.device)
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(step, spec)

        logits = self.model(x)
        loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())
        objective = loss + spec.train.rate_penalty * firing_rate(self.model) \
            if spec.train.rate_penalty else loss
        self.optimizer.zero_grad(set_to_none=True)
        objective.backward()
        if spec.train.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(),
                                           spec.train.grad_clip)
        self.optimizer.step()
        return loss.item()

    def validate(self, step: int) -> None:
        metrics = evaluate(self.model, self.corpus, self.spec, self.device,
                           self.progress)
        record = {"step": step, **dataclasses.asdict(metrics)}
        self.history.append(record)
        unit = loss_unit(self.spec)
        log.info("step %d: val_loss %.4f nats/%s, %.3f bits/%s, accuracy "
                 "%.3f", step, metrics.val_loss, unit, metrics.val_bpc, unit,
                 metrics.val_accuracy)

    def save(self, step: int) -> None:
        save_checkpoint(
            self.checkpoint_path, spec=self.spec, tokenizer=self.tokenizer,
            model_state=self.model.state_dict(),
            optimizer_state=self.optimizer.state_dict(), step=step,
            metrics={"history": self.history,
                     "corpus_sha256": self.corpus_digest},
            chars_per_token=self.corpus.chars_per_token)
        self.saved_step = step
