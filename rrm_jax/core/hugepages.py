"""Transparent huge pages for XLA:CPU's buffers, which glibc only asks for when told at process start.

XLA:CPU allocates a step's large temporaries (a scanned layer stack's residuals, activation gradients) fresh on
every call, and with 4 KiB pages writing a new buffer is page faults more than stores: on a 2-core host the
demo's SFT step measured 0.24 s with 4 KiB pages and 0.15 s with ``glibc.malloc.hugetlb=1`` (glibc >= 2.35
then madvises its heap and mmapped chunks for huge pages), the forward pass 42 -> 31 ms. The kernel setting
most distributions ship, ``[madvise]``, grants huge pages only to memory so marked, and glibc reads its
tunables once, at start, so the ``rrm-jax`` command re-executes itself once with the tunable set.

``RRM_JAX_HUGEPAGES=0`` turns it off; a ``GLIBC_TUNABLES`` that already names ``glibc.malloc.hugetlb`` is kept.
"""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

TUNABLE = "glibc.malloc.hugetlb"
THP_MODE = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def wanted(environ=os.environ) -> bool:
    """Whether this process would gain from the tunable: Linux, glibc >= 2.35, THP in madvise mode, not set."""
    if environ.get("RRM_JAX_HUGEPAGES", "1") == "0" or TUNABLE in environ.get("GLIBC_TUNABLES", ""):
        return False
    if sys.platform != "linux":
        return False
    lib, version = platform.libc_ver()
    try:
        if lib != "glibc" or tuple(int(x) for x in version.split(".")[:2]) < (2, 35):
            return False
        return "[madvise]" in THP_MODE.read_text()
    except (OSError, ValueError):
        return False


def environ_with_tunable(environ=os.environ) -> dict[str, str]:
    """``environ`` plus ``glibc.malloc.hugetlb=1`` in GLIBC_TUNABLES (other tunables kept)."""
    env = dict(environ)
    env["GLIBC_TUNABLES"] = ":".join(filter(None, [env.get("GLIBC_TUNABLES", ""), f"{TUNABLE}=1"]))
    return env


def reexec_if_wanted() -> None:
    """Re-run this very command line with the tunable set (same interpreter, arguments and PID), or return."""
    if wanted():
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], environ_with_tunable())
