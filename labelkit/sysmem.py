"""This machine's memory, and the kNN memory budget ``auto`` derives from it.

``--memory-budget auto`` (the default) is half the memory available when the stage starts
(Linux ``MemAvailable``: free memory plus the page cache the kernel can reclaim). Half, because
the budget covers only the kNN layer: the embeddings' page cache and the stage's own per-row
arrays (docs/performance.md, "Pseudolabel memory per row") need the rest. Where the available
memory cannot be read, ``auto`` is no budget, as before it existed.
"""

from __future__ import annotations

import os
from pathlib import Path

AUTO = "auto"
AUTO_SHARE = 0.5  # of the available memory


def memory(meminfo: Path = Path("/proc/meminfo")) -> tuple[int | None, int | None]:
    """(total, available) bytes of RAM: /proc/meminfo, else sysconf (available where it has one)."""
    try:
        info = dict(line.split(":", 1) for line in meminfo.read_text().splitlines() if ":" in line)
        kib = {k: int(v.split()[0]) for k, v in info.items() if k in ("MemTotal", "MemAvailable")}
        return kib["MemTotal"] * 1024, (kib["MemAvailable"] * 1024 if "MemAvailable" in kib else None)
    except (OSError, KeyError, ValueError, IndexError):
        pass
    try:
        page = os.sysconf("SC_PAGE_SIZE")
        total = page * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None, None
    try:
        return total, page * os.sysconf("SC_AVPHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return total, None


def auto_budget(available: int | None) -> int | None:
    """``--memory-budget auto`` in bytes: :data:`AUTO_SHARE` of ``available``; None (no budget) when unknown.

    >>> auto_budget(24 * 10**9), auto_budget(None)
    (12000000000, None)
    """
    return int(available * AUTO_SHARE) if available else None
