"""Energy models (``targets/energy-*.toml``) and the ANN's operation counts.

An energy model is a declarative TOML file. ``[constants.NAME]`` tables
give one published figure each, as ``picojoules`` with its ``source``.
``[operations]`` prices each counted operation kind as a sum of
(count x constant). The spiking kinds are all required. ``ann_mac`` is
optional, and a model without it gives no ANN energy. docs/energy.md
defines what each kind counts.
"""

from __future__ import annotations

import importlib.resources
import math
from dataclasses import dataclass
from pathlib import Path

import tomli

from .errors import NeurodeployError
from .spec import ModelSpec

ENERGY_PREFIX = "energy-"
SNN_OPERATIONS = ("synaptic_op", "attention_accumulate", "neuron_update",
                  "spike")
ANN_OPERATION = "ann_mac"
MODEL_KEYS = {"name", "description", "constants", "operations"}
CONSTANT_KEYS = {"picojoules", "source"}


@dataclass(frozen=True)
class EnergyModel:
    """Energy per operation kind in picojoules, with the figures behind it."""

    name: str
    description: str
    source_file: str
    constants: dict[str, dict]
    operations: dict[str, dict[str, float]]
    costs: dict[str, float]

    @property
    def has_ann(self) -> bool:
        return ANN_OPERATION in self.costs

    def energy_pj(self, counts: dict[str, float]) -> float:
        """Return the energy in pJ of operation counts {kind: count}."""
        return sum(count * self.costs[kind] for kind, count in counts.items())


def energy_model_names() -> list[str]:
    """Return the names of the bundled energy models (targets/energy-*)."""
    folder = importlib.resources.files("neurodeploy._targets")
    return sorted(path.name[len(ENERGY_PREFIX):-5]
                  for path in folder.iterdir()
                  if path.name.startswith(ENERGY_PREFIX)
                  and path.name.endswith(".toml"))


def load_energy_model(name_or_path: str) -> EnergyModel:
    """Load a bundled model by name, or any model file by its .toml path.

    Raises NeurodeployError naming the file and the field at fault.
    """
    path = Path(name_or_path)
    if path.suffix == ".toml":
        if not path.is_file():
            raise NeurodeployError(f"energy model file not found: {path}")
        return parse_energy_model(path.read_text(encoding="utf-8"),
                                  str(path))
    names = energy_model_names()
    if name_or_path not in names:
        raise NeurodeployError(
            f"unknown energy model {name_or_path!r}; choose one of {names} "
            "or give the path of a .toml file")
    resource = importlib.resources.files("neurodeploy._targets") \
        / f"{ENERGY_PREFIX}{name_or_path}.toml"
    return parse_energy_model(resource.read_text(encoding="utf-8"),
                              f"targets/{ENERGY_PREFIX}{name_or_path}.toml")


def parse_energy_model(text: str, source_file: str) -> EnergyModel:
    """Validate an energy model's TOML text; ``source_file`` names it in errors."""
    def invalid(field: str, problem: str) -> NeurodeployError:
        return NeurodeployError(
            f"energy model {source_file}: field '{field}' {problem}")

    try:
        data = tomli.loads(text)
    except tomli.TOMLDecodeError as error:
        raise NeurodeployError(
            f"energy model {source_file}: invalid TOML: {error}") from None
    unknown = set(data) - MODEL_KEYS
    if unknown:
        raise invalid(sorted(unknown)[0], "is unknown; an energy model has "
                      f"only {sorted(MODEL_KEYS)}")
    for key in ("name", "description"):
        if not isinstance(data.get(key), str) or not data[key].strip():
            raise invalid(key, "is missing or not a non-empty string")

    constants = data.get("constants")
    if not isinstance(constants, dict) or not constants:
        raise invalid("constants", "is missing; add [constants.NAME] tables "
                      "with picojoules and source")
    for name, entry in constants.items():
        field = f"constants.{name}"
        if not isinstance(entry, dict):
            raise invalid(field, "must be a table with picojoules and source")
        unknown = set(entry) - CONSTANT_KEYS
        if unknown:
            raise invalid(f"{field}.{sorted(unknown)[0]}", "is unknown; a "
                          "constant has only picojoules and source")
        value = entry.get("picojoules")
        if not _is_number(value) or value < 0:
            raise invalid(f"{field}.picojoules", f"is {value!r}; it must be "
                          "a non-negative number")
        source = entry.get("source")
        if not isinstance(source, str) or not source.strip():
            raise invalid(f"{field}.source", "is missing; every constant "
                          "needs the publication its figure comes from")

    operations = data.get("operations")
    if not isinstance(operations, dict):
        raise invalid("operations", "is missing; add an [operations] table")
    allowed = set(SNN_OPERATIONS) | {ANN_OPERATION}
    for kind in operations:
        if kind not in allowed:
            raise invalid(f"operations.{kind}", "is unknown; operation kinds "
                          f"are {sorted(allowed)}")
    for kind in SNN_OPERATIONS:
        if kind not in operations:
            raise invalid(f"operations.{kind}", "is missing; write {} for "
                          "an operation this model does not cost")

    costs = {}
    for kind, terms in operations.items():
        field = f"operations.{kind}"
        if not isinstance(terms, dict):
            raise invalid(field, "must be a table {CONSTANT = COUNT, ...}")
        for constant, count in terms.items():
            if constant not in constants:
                raise invalid(f"{field}.{constant}", "names no constant in "
                              "[constants]")
            if not _is_number(count) or count < 0:
                raise invalid(f"{field}.{constant}", f"is {count!r}; it "
                              "must be a non-negative number")
        costs[kind] = sum(count * constants[constant]["picojoules"]
                          for constant, count in terms.items())
    return EnergyModel(data["name"], data["description"], source_file,
                       constants, operations, costs)


def _is_number(value) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


def ann_macs(model: ModelSpec, vocab_size: int, position: int
             ) -> list[tuple[str, int]]:
    """Count the ANN's multiply-accumulates for one token at ``position``.

    The same-size ANN (neurodeploy/model/ann.py) runs one new token with a
    KV cache holding positions 0..position, so P = position + 1 keys and
    values take part. Per block, with d = d_model: QKV 3 d^2, scores
    q.k over the cache d P (H heads of d / H channels), the weighted sum of
    V d P, the output projection d^2, MLP up d d_mlp and down d_mlp d.
    The head adds d V. The embedding lookups and the addition of the
    position embedding are no MACs, so their rows are 0. LayerNorm,
    softmax, GELU, bias and residual additions are not counted.
    """
    d = model.d_model
    cached = position + 1
    rows = [("embedding", 0)]
    for block in range(model.n_layers):
        prefix = f"block{block}"
        rows += [
            (f"{prefix}.attn.qkv", 3 * d * d),
            (f"{prefix}.attn.scores", d * cached),
            (f"{prefix}.attn.values", d * cached),
            (f"{prefix}.attn.out", d * d),
            (f"{prefix}.mlp.up", d * model.d_mlp),
            (f"{prefix}.mlp.down", model.d_mlp * d),
        ]
    rows.append(("head", d * vocab_size))
    return rows
