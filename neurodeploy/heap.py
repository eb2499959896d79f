"""Keep freed memory in the process heap while training on a CPU.

A training step allocates and frees the same large tensors in every
step. With glibc's default settings, ``free`` hands much of that memory
back to the kernel: chunks above the mmap threshold are unmapped, and the
top of the heap is trimmed once more than the trim threshold is free.
The next step then faults the pages in again, and the kernel zeroes each
one. Measured with ``/usr/bin/time neurodeploy train --model demo
--steps 150`` on 2 cores: 955,843 minor page faults, 1.96 s of system
time and 14,945 tokens per second with glibc's defaults, against
153,628 faults, 0.45 s and 15,929 tokens per second with the settings
below.

``keep_freed_memory`` raises both thresholds with ``mallopt``, so the
heap keeps what a step frees for the next one. The price is that the
process holds on to its peak heap size until it exits.

It also turns on PyTorch's transparent huge pages for large CPU tensors.
``python benchmarks/train_bench.py --single``, three runs each way (then
alternating single steps of the two models), gave SNN/ANN ratios of 0.225-0.229 without them and 0.233-0.234 with them:
the neuron kernels, which stream through memory, gain and the ANN does
not.
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform

log = logging.getLogger(__name__)

# From glibc's <malloc.h>.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
# Allocations below the mmap threshold come from the heap. glibc 2.36
# accepts 1 GiB. The mallopt(3) manual gives 32 MiB as the upper limit on
# 64-bit systems, so that is the fallback where 1 GiB is rejected.
MMAP_THRESHOLDS = (1 << 30, 32 << 20)
# Free memory kept at the top of the heap before it is trimmed: the
# largest value of mallopt's int argument, about 2 GiB.
TRIM_THRESHOLD = 2**31 - 1
# With this variable at 1, PyTorch 2.3's CPU allocator backs tensors of
# 2 MiB and more with huge pages (tests/test_heap.py watches AnonHugePages
# rise). It reads the variable once, at its first such allocation.
THP_VARIABLE = "THP_MEM_ALLOC_ENABLE"
# glibc reads these at start-up. A user who set one has chosen already.
USER_VARIABLES = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_",
                  "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_")


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds for this process, and turn
    on huge pages for large tensors unless ``THP_MEM_ALLOC_ENABLE`` is set.

    Returns True when the settings took effect. Does nothing, and
    returns False, on a C library other than glibc or when the user set
    glibc's malloc variables in the environment. Call it before the
    process allocates a tensor of 2 MiB, or huge pages stay off."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    os.environ.setdefault(THP_VARIABLE, "1")
    chosen = [name for name in USER_VARIABLES if name in os.environ]
    if "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", ""):
        chosen.append("GLIBC_TUNABLES")
    if chosen:
        log.debug("malloc settings left as the environment sets them: %s",
                  ", ".join(chosen))
        return False

    libc = ctypes.CDLL(None)
    mmap_set = any(libc.mallopt(M_MMAP_THRESHOLD, threshold) == 1
                   for threshold in MMAP_THRESHOLDS)
    trim_set = libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    if not (mmap_set and trim_set):
        log.warning("mallopt failed to raise the heap thresholds; training "
                    "runs with glibc's defaults, which return freed memory "
                    "to the kernel after every step")
    return mmap_set and trim_set
