"""Model and training specs: typed dataclasses loaded from TOML files.

A spec file has a ``[model]`` and a ``[train]`` table. Named specs live in the
``models/`` catalogue; any path to a ``.toml`` file works too. Every field can
be overridden with ``FIELD=VALUE`` or ``model.FIELD=VALUE``.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import tomli

from .errors import NeurodeployError

CHOICES = {
    "arch": ("snn", "ann"),
    "tokenizer": ("char", "byte"),
    "token_encoding": ("learned", "one_hot", "binary"),
    "position_encoding": ("learned", "binary", "one_hot", "sinusoid", "none"),
    "residual": ("membrane", "spike", "float"),
    "norm": ("batch", "power", "layer"),
    "readout": ("stream", "spikes"),
}

# Variants that train but cannot run on Lava, with the setting that fixes them.
NOT_DEPLOYABLE = {
    ("residual", "float"): "set residual=membrane or residual=spike",
    ("norm", "layer"): "set norm=batch or norm=power",
}


@dataclass
class ModelSpec:
    """Architecture of the spiking decoder and of its ANN baseline.

    Sizes are in channels; ``time_steps`` is T, the number of simulation
    steps each token is presented for.
    """

    arch: str = "snn"
    tokenizer: str = "char"
    context: int = 64
    d_model: int = 128
    d_position: int = 16
    n_layers: int = 2
    n_heads: int = 4
    d_mlp: int = 256
    time_steps: int = 4
    token_encoding: str = "learned"
    token_shift: int = 0
    position_encoding: str = "learned"
    residual: str = "membrane"
    norm: str = "batch"
    readout: str = "stream"
    attention_shift: int = 3
    attention_position_shift: bool = False
    threshold: float = 1.0
    current_decay: float = 1.0
    voltage_decay: float = 0.25
    tau_grad: float = 0.01
    scale_grad: float = 10.0
    dropout: float = 0.0

    @property
    def d_head(self) -> int:
        return self.d_model // self.n_heads

    def not_deployable_parts(self) -> list[str]:
        """Return one line per part that Lava cannot run, with its fix."""
        parts = []
        for (name, value), fix in NOT_DEPLOYABLE.items():
            if getattr(self, name) == value:
                parts.append(f"{name}={value}: {fix}")
        return parts


@dataclass
class TrainSpec:
    """Optimiser, schedule and bookkeeping of one training run."""

    steps: int = 1000
    batch_size: int = 32
    learning_rate: float = 3e-3
    min_learning_rate: float = 3e-4
    warmup_steps: int = 50
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    eval_interval: int = 200
    eval_batches: int = 8
    checkpoint_interval: int = 100
    validation_fraction: float = 0.1
    seed: int = 0
    # Weight of the mean firing rate of all spiking layers in the loss;
    # fewer spikes mean fewer synaptic operations and less energy.
    rate_penalty: float = 0.0


@dataclass
class Spec:
    """A model spec and a training spec, as stored in a spec file."""

    name: str = "custom"
    model: ModelSpec = field(default_factory=ModelSpec)
    train: TrainSpec = field(default_factory=TrainSpec)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "spec") -> "Spec":
        """Build a spec from nested tables, rejecting unknown fields."""
        unknown = set(data) - {"name", "model", "train"}
        if unknown:
            raise NeurodeployError(
                f"{source}: unknown table(s) {sorted(unknown)}; "
                "a spec has only 'name', [model] and [train]"
            )
        spec = cls(
            name=str(data.get("name", "custom")),
            model=_build(ModelSpec, data.get("model", {}), f"{source} [model]"),
            train=_build(TrainSpec, data.get("train", {}), f"{source} [train]"),
        )
        validate(spec)
        return spec


def _build(kind, table: dict[str, Any], source: str):
    known = {f.name: f for f in fields(kind)}
    unknown = sorted(set(table) - set(known))
    if unknown:
        raise NeurodeployError(
            f"{source}: unknown field(s) {unknown}; valid fields are "
            f"{sorted(known)}"
        )
    values = {}
    for name, value in table.items():
        values[name] = _coerce(value, known[name], source)
    return kind(**values)


def _coerce(value: Any, spec_field: dataclasses.Field, source: str) -> Any:
    """Convert a TOML or command-line value to the field's declared type."""
    kind = spec_field.type
    try:
        if kind == "bool":
            if isinstance(value, bool):
                return value
            raise ValueError(value)
        if kind == "int":
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if kind == "float":
            return float(value)
        return str(value)
    except (TypeError, ValueError) as error:
        raise NeurodeployError(
            f"{source}: invalid value {value!r} for {spec_field.name}; "
            f"expected {kind}" + (" (true or false)" if kind == "bool" else "")
        ) from error


def validate(spec: Spec) -> None:
    """Raise NeurodeployError naming the first invalid field and its fix."""
    model, train = spec.model, spec.train

    for name, options in CHOICES.items():
        value = getattr(model, name)
        if value not in options:
            raise NeurodeployError(
                f"invalid {name}={value!r}; choose one of {list(options)}"
            )

    positive = {
        "context": model.context, "d_model": model.d_model,
        "n_layers": model.n_layers, "n_heads": model.n_heads,
        "d_mlp": model.d_mlp, "time_steps": model.time_steps,
        "steps": train.steps, "batch_size": train.batch_size,
        "eval_interval": train.eval_interval,
        "eval_batches": train.eval_batches,
        "checkpoint_interval": train.checkpoint_interval,
    }
    for name, value in positive.items():
        if value <= 0:
            raise NeurodeployError(
                f"invalid {name}={value}; it must be a positive integer"
            )

    _validate_sizes(model)
    _validate_neuron(model)

    if not 0.0 < train.validation_fraction < 1.0:
        raise NeurodeployError(
            f"invalid validation_fraction={train.validation_fraction}; "
            "use a fraction between 0 and 1, such as 0.1"
        )
    if train.learning_rate <= 0 or train.min_learning_rate < 0:
        raise NeurodeployError(
            f"invalid learning rates ({train.learning_rate}, "
            f"{train.min_learning_rate}); both must be positive"
        )
    if min(train.warmup_steps, train.grad_clip, train.weight_decay,
           train.rate_penalty) < 0:
        raise NeurodeployError(
            "warmup_steps, grad_clip, weight_decay and rate_penalty must not "
            "be negative"
        )


def _validate_sizes(model: ModelSpec) -> None:
    if model.d_model % model.n_heads:
        raise NeurodeployError(
            f"d_model={model.d_model} is not divisible by "
            f"n_heads={model.n_heads}; choose sizes with d_model % n_heads == 0"
        )
    if not 0 <= model.token_shift < model.context:
        raise NeurodeployError(
            f"invalid token_shift={model.token_shift}; it counts previous "
            f"tokens joined to the code and must lie in [0, context)"
        )
    if model.position_encoding == "none":
        return
    if not 0 < model.d_position < model.d_model:
        raise NeurodeployError(
            f"invalid d_position={model.d_position}; it must lie between 1 "
            f"and d_model - 1 ({model.d_model - 1}), or set "
            "position_encoding=none"
        )
    needed = {"one_hot": model.context,
              "binary": math.ceil(math.log2(max(model.context, 2)))}
    minimum = needed.get(model.position_encoding, 1)
    if model.d_position < minimum:
        raise NeurodeployError(
            f"position_encoding={model.position_encoding} needs "
            f"d_position >= {minimum} for context={model.context}; "
            f"set d_position={minimum}"
        )


def _validate_neuron(model: ModelSpec) -> None:
    if model.threshold <= 0:
        raise NeurodeployError(
            f"invalid threshold={model.threshold}; it must be positive"
        )
    for name in ("current_decay", "voltage_decay"):
        value = getattr(model, name)
        if not 0.0 <= value <= 1.0:
            raise NeurodeployError(
                f"invalid {name}={value}; a decay is a fraction per time "
                "step between 0 and 1"
            )
    if model.tau_grad <= 0 or model.scale_grad <= 0:
        raise NeurodeployError("tau_grad and scale_grad must be positive")
    # A V enters the attention LIF as (A V) << (12 - shift) in SLAYER's
    # 12-bit state units, exact only for total shifts up to 12.
    longest = model.attention_shift + (
        math.floor(math.log2(model.context)) if model.attention_position_shift
        else 0)
    if model.attention_shift < 0 or longest > 12:
        raise NeurodeployError(
            f"invalid attention_shift={model.attention_shift} for "
            f"context={model.context}: the shift of A V reaches {longest} "
            "at the last position and must stay between 0 and 12; lower "
            "attention_shift, shorten the context or set "
            "attention_position_shift=false"
        )

    if not 0.0 <= model.dropout < 1.0:
        raise NeurodeployError(
            f"invalid dropout={model.dropout}; use a fraction in [0, 1)"
        )


def catalogue_names() -> list[str]:
    """Return the names of the built-in model specs."""
    folder = importlib.resources.files("neurodeploy._models")
    return sorted(p.name[:-5] for p in folder.iterdir()
                  if p.name.endswith(".toml"))


def load_spec(name_or_path: str) -> Spec:
    """Load a named spec from the catalogue or a spec file by path."""
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.exists():
        if not path.is_file():
            raise NeurodeployError(f"spec file not found: {path}")
        text = path.read_text(encoding="utf-8")
        source = str(path)
    else:
        names = catalogue_names()
        if name_or_path not in names:
            raise NeurodeployError(
                f"unknown model {name_or_path!r}; choose one of {names} or "
                "give the path to a .toml spec file"
            )
        resource = importlib.resources.files("neurodeploy._models")
        text = (resource / f"{name_or_path}.toml").read_text(encoding="utf-8")
        source = f"model {name_or_path!r}"

    try:
        data = tomli.loads(text)
    except tomli.TOMLDecodeError as error:
        raise NeurodeployError(f"{source}: invalid TOML: {error}") from error
    return Spec.from_dict(data, source)


def apply_overrides(spec: Spec, assignments: list[str]) -> Spec:
    """Return a copy of ``spec`` with ``FIELD=VALUE`` overrides applied.

    ``FIELD`` is ``model.NAME``, ``train.NAME`` or a bare ``NAME`` that
    exists in exactly one table.
    """
    data = spec.to_dict()
    for assignment in assignments:
        key, separator, text = assignment.partition("=")
        if not separator or not key:
            raise NeurodeployError(
                f"invalid override {assignment!r}; write FIELD=VALUE, "
                "for example d_model=64"
            )
        table, name = _locate(key.strip(), data)
        data[table][name] = _parse_value(text.strip())
    return Spec.from_dict(data, "override")


def _locate(key: str, data: dict[str, Any]) -> tuple[str, str]:
    if "." in key:
        table, _, name = key.partition(".")
        if table in ("model", "train") and name in data[table]:
            return table, name
    else:
        tables = [t for t in ("model", "train") if key in data[t]]
        if len(tables) == 1:
            return tables[0], key
    raise NeurodeployError(
        f"unknown spec field {key!r}; model fields: {sorted(data['model'])}; "
        f"train fields: {sorted(data['train'])}"
    )


def _parse_value(text: str) -> Any:
    try:
        return tomli.loads(f"v = {text}")["v"]
    except tomli.TOMLDecodeError:
        return text
