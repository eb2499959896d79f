"""Spec files, the catalogue and command-line overrides."""

import pytest

from neurodeploy.errors import NeurodeployError
from neurodeploy.spec import (
    Spec, apply_overrides, catalogue_names, load_spec)


def test_catalogue_has_demo_and_small():
    assert {"demo", "small"} <= set(catalogue_names())
    for name in catalogue_names():
        spec = load_spec(name)
        assert spec.name == name
        assert spec.model.not_deployable_parts() == []


def test_spec_by_path(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text('name = "mine"\n[model]\nd_model = 64\n')
    spec = load_spec(str(path))
    assert spec.model.d_model == 64


def test_unknown_model_name():
    with pytest.raises(NeurodeployError, match="unknown model 'nope'"):
        load_spec("nope")


def test_unknown_spec_field_in_file(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[model]\nwidth = 64\n")
    with pytest.raises(NeurodeployError, match=r"unknown field\(s\) \['width'\]"):
        load_spec(str(path))


def test_override_bare_and_qualified_fields():
    spec = apply_overrides(Spec(), ["d_model=64", "train.steps=7",
                                    "residual=spike"])
    assert spec.model.d_model == 64
    assert spec.train.steps == 7
    assert spec.model.residual == "spike"


def test_override_unknown_field():
    with pytest.raises(NeurodeployError, match="unknown spec field 'widht'"):
        apply_overrides(Spec(), ["widht=3"])


def test_override_needs_equals_sign():
    with pytest.raises(NeurodeployError, match="FIELD=VALUE"):
        apply_overrides(Spec(), ["d_model"])


@pytest.mark.parametrize("assignment", [
    "d_model=0", "n_layers=-1", "steps=0", "batch_size=-4", "context=0",
    "time_steps=0"])
def test_non_positive_sizes_rejected(assignment):
    name = assignment.split("=")[0]
    with pytest.raises(NeurodeployError, match=f"invalid {name}="):
        apply_overrides(Spec(), [assignment])


@pytest.mark.parametrize("assignment,message", [
    ("residual=sideways", "choose one of"),
    ("n_heads=3", "not divisible"),
    ("voltage_decay=1.5", "between 0 and 1"),
    ("attention_shift=-1", "attention_shift"),
    ("d_position=200", "d_position"),
    ("d_model=abc", "expected int"),
])
def test_invalid_values_rejected(assignment, message):
    with pytest.raises(NeurodeployError, match=message):
        apply_overrides(Spec(), [assignment])


def test_not_deployable_parts_name_the_fix():
    spec = apply_overrides(Spec(), ["residual=float", "norm=layer"])
    parts = spec.model.not_deployable_parts()
    assert "residual=float: set residual=membrane or residual=spike" in parts
    assert "norm=layer: set norm=batch or norm=power" in parts
