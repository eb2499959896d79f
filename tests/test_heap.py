"""The trainer's heap settings keep a step's freed memory for the next."""

import json
import platform
import subprocess
import sys

import pytest

from neurodeploy import heap

# Three 20 MB tensors per round: together above glibc's default trim
# threshold once its dynamic mmap threshold has risen to 20 MB, so with
# the defaults each round gives the memory back and faults it in again.
ROUNDS_SCRIPT = """
import json, resource, sys
import torch
from neurodeploy import heap
kept = heap.keep_freed_memory() if sys.argv[1] == "keep" else False
faults = []
for _ in range(12):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    tensors = [torch.empty(5 << 20).fill_(1.0) for _ in range(3)]
    del tensors
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt
                  - before)
print(json.dumps({"kept": kept, "faults": faults}))
"""

glibc = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
    reason="mallopt settings exist only in glibc")


def _rounds(mode: str, **env) -> dict:
    output = subprocess.run(
        [sys.executable, "-c", ROUNDS_SCRIPT, mode], check=True,
        capture_output=True, text=True, timeout=120,
        env={"PATH": "/usr/bin:/bin", **env}).stdout
    return json.loads(output)


@glibc
def test_freed_memory_is_reused_without_page_faults():
    default = _rounds("default")
    kept_heap = _rounds("keep")

    assert kept_heap["kept"] is True
    pages = 3 * (20 << 20) // 4096
    # The kept heap grows for a few rounds and then needs no new pages.
    # The default heap faults in most of the 60 MB again in every round.
    assert max(kept_heap["faults"][-4:]) < pages // 20
    assert min(default["faults"][-4:]) > pages // 2


@glibc
def test_user_malloc_settings_win():
    assert _rounds("keep", MALLOC_TRIM_THRESHOLD_="131072")["kept"] is False
    assert _rounds(
        "keep", GLIBC_TUNABLES="glibc.malloc.trim_threshold=131072"
    )["kept"] is False


def test_other_c_libraries_are_left_alone(monkeypatch):
    monkeypatch.setattr(heap.platform, "libc_ver", lambda: ("musl", "1.2"))
    assert heap.keep_freed_memory() is False
