"""float32 against bfloat16 on the CPU, side by side in one run, on the real-size architecture.

    OMP_NUM_THREADS=2 python benchmarks/bench_precision.py [--repeats 2]

Three ways to run the same randomly initialised InstructPix2Pix-size model (published configs,
no download): float32 (``dtype="float32"``), float32 weights under bfloat16 autocast
(``dtype="bf16-autocast"``, what ``auto`` picks on a CPU with native bfloat16) and bfloat16
weights (``dtype="bfloat16"``). Timed interleaved, so load on the machine hits all three alike:
the VAE encode of a 512×512 image, the UNet forward to the early exit, B (a fresh image:
set_image + segment) and C (a further expression). With random weights the maps are nearly
flat, so masks are not compared here (the shapes-world checkpoint's are, in
``tests/test_precision.py`` and docs/performance.md); reported instead is how far the captured
features and the full noise prediction move from float32's (relative L2 difference).
Rewrites the "precision" section of docs/performance.md.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]

from bench_latency import machine, real_size_model  # noqa: E402
from docsection import publish, replace_section  # noqa: E402

from napari_editseg import EditSegmenter  # noqa: E402
from napari_editseg.core.model import native_bf16  # noqa: E402

MODES = ("float32", "bf16-autocast", "bfloat16")


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.linalg.norm(a.float() - b.float()) / torch.linalg.norm(b.float()))


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", help="write every figure here")
    parser.add_argument("--doc", default=str(ROOT / "docs" / "performance.md"))
    args = parser.parse_args(argv)
    cpu = torch.device("cpu")
    base = real_size_model(cpu, torch.float32)
    pipe_bf16 = copy.deepcopy(base.pipe)
    for part in (pipe_bf16.unet, pipe_bf16.vae, pipe_bf16.text_encoder):
        part.to(torch.bfloat16)
    weights_bf16 = replace(base, pipe=pipe_bf16, dtype=torch.bfloat16)
    segmenters = {"float32": EditSegmenter(base),
                  "bf16-autocast": EditSegmenter(replace(base, autocast=torch.bfloat16)),
                  "bfloat16": EditSegmenter(weights_bf16)}
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (512, 512, 3), dtype=np.uint8) for _ in range(args.repeats + 1)]
    times: dict = {m: {k: [] for k in ("VAE encode", "UNet to the early exit", "B", "C")} for m in MODES}
    outputs: dict = {}
    for segmenter in segmenters.values():  # warm-up
        segmenter.set_image(images[-1])
        segmenter.segment("the dog on the left")
    for r in range(args.repeats):
        for mode, segmenter in segmenters.items():
            start = time.perf_counter()
            segmenter.set_image(images[r])
            result = segmenter.segment("the red car")
            times[mode]["B"].append(time.perf_counter() - start)
            times[mode]["VAE encode"].append(result.timings["encode_image"])
            start = time.perf_counter()
            segmenter.segment("the largest nucleus")
            times[mode]["C"].append(time.perf_counter() - start)
            times[mode]["UNet to the early exit"].append(result.timings["denoiser"])
    for mode, segmenter in segmenters.items():
        segmenter.set_image(images[0])
        forward = segmenter.forward(["the red car"], prior_source="attention")
        full = segmenter.forward(["the red car"], prior_source="attention", early_exit=False)
        outputs[mode] = (forward.store.features, full.noise_pred)
    figures: dict = {"machine": machine(cpu), "native_bf16": native_bf16(), "repeats": args.repeats,
                     "seconds": {m: {k: statistics.median(v) for k, v in t.items()} for m, t in times.items()},
                     "runs": times, "relative_difference": {}}
    reference_features, reference_noise = outputs["float32"]
    for mode in MODES[1:]:
        features, noise = outputs[mode]
        figures["relative_difference"][mode] = {
            **{f"features {name}": relative(features[name], reference_features[name]) for name in features},
            "noise prediction": relative(noise, reference_noise)}
    publish(figures, args.json, args.doc, write_doc)
    return figures


def write_doc(doc: Path, f: dict) -> None:
    seconds = f["seconds"]
    rows = "\n".join(
        f"| {k} | {seconds['float32'][k]:.2f} | {seconds['bf16-autocast'][k]:.2f} "
        f"({seconds['float32'][k] / seconds['bf16-autocast'][k]:.2f}×) | {seconds['bfloat16'][k]:.2f} "
        f"({seconds['float32'][k] / seconds['bfloat16'][k]:.2f}×) |" for k in seconds["float32"])
    names = list(f["relative_difference"]["bf16-autocast"])
    diffs = "\n".join(f"| {n} | {f['relative_difference']['bf16-autocast'][n]:.3f} | "
                      f"{f['relative_difference']['bfloat16'][n]:.3f} |" for n in names)
    section = f"""<!-- measured:precision:start -->
Measured on {f['machine']} (native bfloat16: {'yes' if f['native_bf16'] else 'no'}), the real-size
architecture with random weights at 512×512, median of {f['repeats']} interleaved runs after a warm-up
(`benchmarks/bench_precision.py`). Seconds, and the speed-up over float32:

| | float32 | bf16-autocast | bfloat16 weights |
|---|---|---|---|
{rows}

How far bfloat16 moves what the method reads, relative to float32 (‖x − x₃₂‖ / ‖x₃₂‖, same image,
text and noise):

| | bf16-autocast | bfloat16 weights |
|---|---|---|
{diffs}
<!-- measured:precision:end -->"""
    replace_section(doc, "precision", section)


if __name__ == "__main__":
    main()
