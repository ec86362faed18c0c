"""The memory guard's estimate against measured peaks, on the real-size InstructPix2Pix architecture.

    nice -n 19 python benchmarks/bench_memory.py --json benchmarks/results/memory-cpu.json

The guard (``core/budget.py``) refuses a request whose estimated working memory exceeds what
is free. This measures what the request really takes: each case runs in a fresh process that
builds the published UNet / VAE / CLIP text encoder with random weights on the CPU
(``bench_latency.real_size_model``; memory does not depend on the weights), then

  1. ``set_image`` of a random picture: the peak resident memory above the level before it
     (``VmHWM`` reset through ``/proc/self/clear_refs``, freed memory handed back with
     ``malloc_trim`` between phases), against the guard's estimate for that call;
  2. ``segment`` (or ``segment_batch`` of several expressions): the same.

The estimate is what the guard itself computes: ``check_memory`` is wrapped to record the
total of its terms, so the figures are the guard's, not a copy of its formula (the guard adds
``budget.RUNTIME`` to them). A ratio measured / guard above 1 means the guard would let
through a request that does not fit. The virtual size is sampled too: it is what
``ulimit -v`` limits, and it grows past resident memory (thread stacks, allocator arenas).
Writes --json and the measured section of docs/performance.md.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import re
import subprocess
import sys
import threading
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

from docsection import publish, replace_section  # noqa: E402

GIB = 2**30
# (dtype, picture height, width, resolution, expressions); resolution 512 is the default
CASES = [(dtype, *case) for dtype in ("float32", "bfloat16") for case in (
    (512, 512, 512, 1), (512, 512, 256, 1), (512, 512, 768, 1), (512, 512, 512, 8), (3000, 4000, 512, 1))]


def peak_kib() -> int:
    return int(re.search(r"VmHWM:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))


def resident_kib() -> int:
    return int(re.search(r"VmRSS:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))


class VirtualPeak:
    """The largest virtual size (``VmSize``) seen while a block runs, sampled every 5 ms: what
    ``ulimit -v`` (RLIMIT_AS) limits, which the guard also reads."""

    def __enter__(self):
        self.start = self.peak = virtual_kib()
        self._stop = threading.Event()

        def sample():
            while not self._stop.wait(0.005):
                self.peak = max(self.peak, virtual_kib())

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def virtual_kib() -> int:
    return int(re.search(r"VmSize:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))


def settle() -> int:
    """Free what can be freed, hand it back to the system, reset the peak; the resident KiB now."""
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")
    return resident_kib()


def one_case(dtype: str, height: int, width: int, resolution: int, expressions: int) -> dict:
    """Runs in its own process: measured peaks and the guard's estimates of the two phases."""
    import numpy as np
    import torch
    from bench_latency import real_size_model

    import napari_editseg.core.segmenter as segmenter_module
    from napari_editseg import EditSegmenter

    estimates: list[int] = []
    real_check = segmenter_module.check_memory

    def recording(needs, device, host_needs=()):
        estimates.append(sum(n.bytes for n in list(needs) + list(host_needs)))
        return real_check(needs, device, host_needs)

    segmenter_module.check_memory = recording
    model = real_size_model(torch.device("cpu"), getattr(torch, dtype))
    segmenter = EditSegmenter(model, resolution=resolution)
    picture = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    texts = ["the dog on the left", "the red car", "the largest nucleus", "the woman's face", "the cup",
             "the man in the blue shirt", "the tree behind the house", "the second bird from the right"]
    figures = {"weights_kib": settle()}
    with torch.inference_mode():
        before = settle()
        with VirtualPeak() as virtual:
            segmenter.set_image(picture)
        figures["set_image"] = {"measured": (peak_kib() - before) * 1024, "estimate": estimates[-1],
                                "virtual": (virtual.peak - virtual.start) * 1024}
        before = settle()
        with VirtualPeak() as virtual:
            segmenter.segment_batch(texts[:expressions])
        figures["segment"] = {"measured": (peak_kib() - before) * 1024, "estimate": estimates[-1],
                              "virtual": (virtual.peak - virtual.start) * 1024}
    return figures


def run_cases(cases: list) -> list[dict]:
    rows = []
    for case in cases:
        done = subprocess.run([sys.executable, __file__, "--one", json.dumps(case)], capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"case {case} failed:\n{done.stderr[-3000:]}")
        figures = json.loads(done.stdout.strip().splitlines()[-1])
        dtype, height, width, resolution, expressions = case
        for phase in ("set_image", "segment"):
            measured, estimate = figures[phase]["measured"], figures[phase]["estimate"]
            rows.append({"dtype": dtype, "image": f"{height}x{width}", "resolution": resolution,
                         "expressions": expressions, "phase": phase, "measured": measured, "estimate": estimate,
                         "ratio": round(measured / estimate, 3), "virtual": figures[phase]["virtual"],
                         "virtual_ratio": round(figures[phase]["virtual"] / estimate, 3),
                         "weights": figures["weights_kib"] * 1024})
        print(json.dumps(rows[-2:]), flush=True)
    return rows


def write_doc(doc: Path, figures: dict) -> None:
    from bench_latency import cpu_name

    from napari_editseg.core.budget import RUNTIME

    guard = [row["estimate"] + RUNTIME.bytes for row in figures["rows"]]
    lines = ["<!-- measured:memory-estimate:start -->",
             f"Measured on {cpu_name()}, torch {figures['torch']} (`benchmarks/bench_memory.py`, one fresh process per "
             "case, random real-size InstructPix2Pix weights, first call of each kind). *resident*: peak resident "
             "memory above the level before the call (`VmHWM`); *virtual*: peak virtual size above it (`VmSize`, "
             "sampled every 5 ms: what `ulimit -v` limits); *terms*: the estimate's terms for that call; *guard*: "
             f"what the guard compares with the free memory, the terms plus {RUNTIME.bytes >> 20} MiB for the "
             "runtime's own working memory.", "",
             "| dtype | image | resolution | expressions | call | resident | virtual | terms | guard | "
             "resident / guard | virtual / guard |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row, total in zip(figures["rows"], guard):
        lines.append(f"| {row['dtype']} | {row['image']} | {row['resolution']} | {row['expressions']} | "
                     f"`{row['phase']}` | {row['measured'] / GIB:.2f} GiB | {row['virtual'] / GIB:.2f} GiB | "
                     f"{row['estimate'] / GIB:.2f} GiB | {total / GIB:.2f} GiB | {row['measured'] / total:.2f} | "
                     f"{row['virtual'] / total:.2f} |")
    over = max(row["virtual"] - row["estimate"] for row in figures["rows"])
    lines += ["", f"Resident memory stayed within the terms in every case (at most {figures['worst_ratio']:.2f} of "
              f"them); the virtual size grew up to {over / 2**20:.0f} MiB past them at small sizes (thread stacks, "
              f"allocator arenas), which the {RUNTIME.bytes >> 20} MiB term covers: at most "
              f"{max(r['virtual'] / t for r, t in zip(figures['rows'], guard)):.2f} of the guard's total. "
              "The estimate is deliberately generous at large sizes (a third to two thirds of it used): it "
              "refuses what cannot fit, not what nearly fits.",
              "<!-- measured:memory-estimate:end -->"]
    replace_section(doc, "memory-estimate", "\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--json", help="write every figure here")
    parser.add_argument("--doc", default=str(ROOT / "docs" / "performance.md"), help="doc whose measured section is "
                        "rewritten ('' to skip)")
    parser.add_argument("--only", type=int, nargs="*", help="indices of CASES to run (default: all)")
    parser.add_argument("--from-json", help="rewrite the doc from an earlier run's --json, measuring nothing")
    args = parser.parse_args()
    if args.from_json:
        write_doc(Path(args.doc), json.loads(Path(args.from_json).read_text()))
        return
    if args.one:
        print(json.dumps(one_case(*json.loads(args.one))))
        return
    import torch

    cases = [c for i, c in enumerate(CASES) if args.only is None or i in args.only]
    rows = run_cases(cases)
    ratios = [row["ratio"] for row in rows]
    figures = {"torch": torch.__version__, "rows": rows, "worst_ratio": max(ratios), "best_ratio": min(ratios)}
    publish(figures, args.json, args.doc, write_doc)


if __name__ == "__main__":
    main()
