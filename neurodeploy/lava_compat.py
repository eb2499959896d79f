"""Workarounds for bugs in the archived Lava releases we depend on."""

from __future__ import annotations

import multiprocessing.context
import sys

_LAVA_MP = "lava.magma.runtime.message_infrastructure.multiprocessing"


def prepare_lava_import() -> None:
    """Let Lava's runtime import after the start method has been fixed.

    lava-nc 0.10.0 calls ``multiprocessing.set_start_method('fork')`` when
    ``lava.magma.runtime.message_infrastructure.multiprocessing`` is first
    imported. That raises RuntimeError once anything in the process has
    fixed the start method; tqdm's progress-bar lock does. Clearing a
    context that is already 'fork' lets Lava set the same method again.
    """
    if _LAVA_MP in sys.modules:
        return
    default = multiprocessing.context._default_context
    chosen = default._actual_context
    if chosen is not None and chosen.get_start_method() == "fork":
        default._actual_context = None
