"""Lava run targets, read from the TOML files in ``targets/``."""

from __future__ import annotations

import importlib
import importlib.resources
from dataclasses import dataclass

import tomli

from ..errors import NeurodeployError
from ..lava_compat import prepare_lava_import

RUN_CONFIGS = ("Loihi2SimCfg", "Loihi2HwCfg")
SELECT_TAGS = ("fixed_pt", "floating_pt")
# targets/ also contains energy models (neurodeploy/energy.py), named
# energy-NAME.toml, which are not run targets.
ENERGY_PREFIX = "energy-"


@dataclass(frozen=True)
class Target:
    """A Lava run configuration and the ProcessModel tag it selects."""

    name: str
    description: str
    run_config: str
    select_tag: str
    bit_accurate: bool
    requires_module: str | None = None
    requires_package: str | None = None

    @property
    def fixed_point(self) -> bool:
        return self.select_tag == "fixed_pt"

    def check_available(self) -> None:
        """Raise NeurodeployError when the target's Lava extension is missing."""
        if self.requires_module is None:
            return
        prepare_lava_import()
        try:
            importlib.import_module(self.requires_module)
        except ImportError:
            raise NeurodeployError(
                f"target {self.name!r} needs the {self.requires_package} "
                f"extension of Lava (module {self.requires_module} not "
                "found); install it from Intel, or use --target loihi2-sim, "
                "which simulates the same fixed-point arithmetic on the CPU"
            ) from None

    def make_run_config(self):
        """Return the Lava run configuration object of this target."""
        self.check_available()
        from lava.magma.core import run_configs

        config_class = getattr(run_configs, self.run_config)
        return config_class(select_tag=self.select_tag)


def target_names() -> list[str]:
    """Return the names of the bundled targets."""
    folder = importlib.resources.files("neurodeploy._targets")
    return sorted(path.name[:-5] for path in folder.iterdir()
                  if path.name.endswith(".toml")
                  and not path.name.startswith(ENERGY_PREFIX))


def load_target(name: str) -> Target:
    """Load a bundled target by name; raise NeurodeployError if unknown."""
    names = target_names()
    if name not in names:
        raise NeurodeployError(
            f"unknown target {name!r}; choose one of {names}")
    resource = importlib.resources.files("neurodeploy._targets")
    text = (resource / f"{name}.toml").read_text(encoding="utf-8")
    try:
        data = tomli.loads(text)
        target = Target(name=name, **data)
    except (tomli.TOMLDecodeError, TypeError) as error:
        raise NeurodeployError(f"target {name!r}: invalid file: {error}") \
            from None
    if target.run_config not in RUN_CONFIGS:
        raise NeurodeployError(
            f"target {name!r}: invalid run_config {target.run_config!r}; "
            f"expected one of {list(RUN_CONFIGS)}")
    if target.select_tag not in SELECT_TAGS:
        raise NeurodeployError(
            f"target {name!r}: invalid select_tag {target.select_tag!r}; "
            f"expected one of {list(SELECT_TAGS)}")
    return target
