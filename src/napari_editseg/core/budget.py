"""Memory guards: refuse, with one line naming the setting to lower, before anything large exists.

The biggest allocations of a segmentation are known from the image size and the settings
before any of them is made: the captured attention maps and the denoiser's activations (each
family estimates its own forward: ``EditingModel.memory_needs``), the VAE's activations with the
image area the model sees, the work grid's features with ``work_resolution``², and the full-size
outputs with the picture's own pixel count. The
estimate is deliberately rough (within a small factor); it exists to stop the requests that
are off by orders of magnitude (``resolution=2048`` on a small machine) with a sentence instead
of the kernel's OOM killer or a traceback deep inside torch.
"""

from __future__ import annotations

import os
import re
import resource
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

GIB = 2**30


@dataclass(frozen=True)
class Need:
    """One term of the estimate: bytes, what they hold, and what to lower to shrink them."""

    bytes: int
    what: str
    lower: str


def bytes_of(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def image_needs(height: int, width: int, expressions: int = 1) -> list[Need]:
    """The picture at its own size: the float RGB copy, the edge guide's full-size passes,
    and the score / prior / mask maps of each result."""
    pixels = height * width
    return [
        Need(pixels * 4 * 3 * 2, f"the {height}x{width} image as float RGB", "the image size (downscale it)"),
        Need(pixels * 4 * 12 + pixels * 9 * expressions, f"full-size maps of the {height}x{width} image",
             "the image size (downscale it)"),
    ]


def vae_needs(model: Any, size: tuple[int, int], resolution: Any) -> Need:
    """The VAE encoder's activations at the size the model sees (each level's channels at its area)."""
    per_pixel = sum(c / 4**level for level, c in enumerate(model.vae.config.block_out_channels))
    return Need(int(size[0] * size[1] * per_pixel * bytes_of(model.dtype) * 4),
                f"VAE activations at {size[0]}x{size[1]} pixels", f"resolution (now {resolution})")


def _meminfo_available() -> Optional[int]:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _cgroup_available() -> Optional[int]:
    """Room left under a container's memory limit (cgroup v2, then v1), if there is one."""
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            limit = Path(limit_file).read_text().strip()
            usage = int(Path(usage_file).read_text().strip())
        except (OSError, ValueError):
            continue
        if limit.isdigit() and int(limit) < 2**60:
            return max(0, int(limit) - usage)
    return None


def _address_space_available() -> Optional[int]:
    """Room left under ``ulimit -v`` (RLIMIT_AS), if one is set."""
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY:
        return None
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return max(0, soft - pages * os.sysconf("SC_PAGE_SIZE"))


def available_bytes(device: torch.device) -> Optional[int]:
    """Free memory where the tensors will live: the GPU's free memory, or on the CPU (and
    Apple's shared memory) the least of what the system, a container limit and ``ulimit -v``
    leave; None when it cannot be known (then nothing is refused)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))
    known = [b for b in (_meminfo_available(), _cgroup_available(), _address_space_available()) if b is not None]
    if not known:  # no /proc (macOS): the machine's physical memory, an upper bound
        try:
            known = [os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")]
        except (ValueError, OSError, AttributeError):
            return None
    return min(known)


def check_memory(needs: list[Need], device: torch.device, host_needs: list[Need] = ()) -> None:
    """Refuse with one line when the estimate exceeds what is free.

    ``needs`` live on ``device``; ``host_needs`` (full-size image maps) always live in the
    computer's own memory (one pool with ``needs`` unless the device is a CUDA GPU). The line
    names the largest term and the setting that shrinks it.
    """
    pools = [(device, list(needs) + [RUNTIME]), (torch.device("cpu"), list(host_needs))]
    if device.type != "cuda":
        pools = [(device, list(needs) + [RUNTIME] + list(host_needs))]
    for where, terms in pools:
        if not terms:
            continue
        total = sum(t.bytes for t in terms)
        free = available_bytes(where)
        if free is None or total <= free:
            continue
        worst = max(terms, key=lambda t: t.bytes)
        raise MemoryBudgetError(
            f"this needs about {total / GIB:.1f} GiB ({worst.bytes / GIB:.1f} GiB for {worst.what}) but about "
            f"{free / GIB:.1f} GiB are free on {where.type}: lower {worst.lower}"
        )


# What a call takes beyond its terms: allocator arenas, thread stacks, kernel workspaces. Measured on
# the real-size InstructPix2Pix (benchmarks/bench_memory.py, docs/performance.md): the virtual size
# (what `ulimit -v` limits) grew up to 90 MiB past the terms at resolution 256; resident memory never did.
RUNTIME = Need(256 * 2**20, "the runtime's own working memory", "resolution")


class MemoryBudgetError(ValueError):
    """A request whose memory estimate exceeds what is free; nothing large was allocated."""


# -- an out-of-memory error the estimate did not foresee, as the same one line ------------------
_ASKED = [  # how each allocator says what it tried to allocate
    (re.compile(r"tried to allocate (\d+) bytes", re.I), None),  # torch's CPU allocator
    (re.compile(r"tried to allocate ([\d.]+) ?([KMGT]i?B|B)\b", re.I), 1),  # CUDA, MPS
    (re.compile(r"unable to allocate ([\d.]+) ?([KMGT]i?B|B)\b", re.I), 1),  # numpy
]
_UNITS = {"B": 1, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40, "KB": 10**3, "MB": 10**6, "GB": 10**9,
          "TB": 10**12}
_OUT_OF_MEMORY = re.compile(r"DefaultCPUAllocator: (can't allocate memory|not enough memory)|out of memory", re.I)


def memory_error_from(error: BaseException) -> Optional[MemoryBudgetError]:
    """A torch or numpy out-of-memory error as :class:`MemoryBudgetError`'s one line (the
    allocation that failed and what is free), or None when ``error`` is something else.

    torch raises a plain ``RuntimeError`` ("DefaultCPUAllocator: can't allocate memory") on
    the CPU and ``torch.OutOfMemoryError`` on a GPU; numpy a ``MemoryError``."""
    cuda_oom = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)
    if not isinstance(error, (MemoryError, cuda_oom)) and not (
            isinstance(error, RuntimeError) and _OUT_OF_MEMORY.search(str(error))):
        return None
    text = str(error)
    on_gpu = isinstance(error, cuda_oom) or "CUDA" in text
    where = torch.device("cuda" if on_gpu else "mps" if "MPS" in text else "cpu")
    asked = None
    for pattern, has_unit in _ASKED:
        found = pattern.search(text)
        if found:
            asked = int(found.group(1)) if has_unit is None else int(float(found.group(1)) *
                                                                       _UNITS[found.group(2).upper()])
            break
    try:
        free = available_bytes(where)
    except Exception:  # no such device here (an error passed on from elsewhere): say what is known
        free = None
    needs = f"one more allocation of {asked / GIB:.1f} GiB" if asked is not None else "more memory than is free"
    there = f"about {free / GIB:.1f} GiB are free" if free is not None else "that is not free"
    return MemoryBudgetError(f"out of memory: this needs {needs} but {there} on {where.type}: lower resolution "
                             "(--set resolution=...), or use a smaller image or fewer expressions at once")
