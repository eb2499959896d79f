"""The trainer's heap settings keep a step's freed memory for the next."""

import json
import platform
import subprocess
import sys

import pytest

from neurodeploy import heap

# Three 20 MB tensors per round. With glibc's defaults each round gave
# their memory back and faulted it in again (measured by this test).
ROUNDS_SCRIPT = """
import json, resource, sys
import torch
from neurodeploy import heap
applied = heap.keep_freed_memory() if sys.argv[1] == "keep" else False
faults = []
for _ in range(12):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    tensors = [torch.empty(5 << 20).fill_(1.0) for _ in range(3)]
    del tensors
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt
                  - before)
print(json.dumps({"applied": applied, "faults": faults}))
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

    assert kept_heap["applied"] is True
    pages = 3 * (20 << 20) // 4096
    # The kept heap grows for a few rounds and then faults in almost no
    # pages (about 1,000 per round with PyTorch's huge-page alignment,
    # none without). The default heap faults in most of the 60 MB again
    # in every round.
    assert max(kept_heap["faults"][-4:]) < pages // 10
    assert min(default["faults"][-4:]) > pages // 2


@glibc
def test_user_malloc_settings_win():
    assert _rounds("keep", MALLOC_TRIM_THRESHOLD_="131072")["applied"] is False
    assert _rounds(
        "keep", GLIBC_TUNABLES="glibc.malloc.trim_threshold=131072"
    )["applied"] is False


def test_other_c_libraries_are_left_alone(monkeypatch):
    monkeypatch.setattr(heap.platform, "libc_ver", lambda: ("musl", "1.2"))
    assert heap.keep_freed_memory() is False


HUGE_PAGES_SCRIPT = """
import sys
import torch
from neurodeploy import heap
if sys.argv[1] == "keep":
    heap.keep_freed_memory()
tensors = [torch.ones(4 << 20) for _ in range(8)]  # 16 MB each
for line in open("/proc/self/smaps_rollup"):
    if line.startswith("AnonHugePages:"):
        print(int(line.split()[1]))
"""


def _thp_mode() -> str:
    try:
        text = open("/sys/kernel/mm/transparent_hugepage/enabled").read()
    except OSError:
        return "never"
    return text.split("[")[1].split("]")[0]


@glibc
@pytest.mark.skipif(_thp_mode() == "never",
                    reason="transparent huge pages are off on this machine")
def test_large_tensors_get_huge_pages():
    def huge_kib(mode):
        return int(subprocess.run(
            [sys.executable, "-c", HUGE_PAGES_SCRIPT, mode], check=True,
            capture_output=True, text=True, timeout=120,
            env={"PATH": "/usr/bin:/bin"}).stdout)

    assert huge_kib("keep") >= 64 << 10
    if _thp_mode() == "madvise":
        assert huge_kib("default") == 0
