"""Images per second with batched images (``segment_images``) against one image at a time.

    OMP_NUM_THREADS=2 python benchmarks/bench_batch.py                      # CPU: batch 1, 2, 4
    python benchmarks/bench_batch.py --device cuda --batches 1 8 32 --compile   # GPU, fp16

Two models, side by side in one run: the trained shapes-world checkpoint (64 px scenes; the
masks of every batch size are compared with one-at-a-time's), and the real-size InstructPix2Pix
architecture with random weights at 512×512 (speed only; on a CPU with native bfloat16 in
bfloat16, as ``dtype="auto"`` loads a real-size model). ``--compile`` also times the real-size
UNet under ``torch.compile`` (compile time reported apart). Rewrites the "batched-<device>"
section of docs/performance.md.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]

from bench_latency import machine, real_size_model  # noqa: E402
from docsection import publish, replace_section  # noqa: E402

from napari_editseg import EditSegmenter  # noqa: E402
from napari_editseg.core.model import bf16_pays_off, choose_device  # noqa: E402
from napari_editseg.shapes_world import TEST_SEEDS, held_out  # noqa: E402

EXPRESSIONS = ["the dog on the left", "the red car"]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def per_image(segmenter: EditSegmenter, images: list, texts: list, batch: int, device: torch.device):
    """Seconds per image and the masks, the images taken ``batch`` at a time (1: set_image +
    segment_batch, as before batching existed)."""
    sync(device)
    start, masks = time.perf_counter(), []
    for k in range(0, len(images), batch):
        if batch == 1:
            segmenter.set_image(images[k])
            results = [segmenter.segment_batch(texts[k])]
        else:
            results = segmenter.segment_images(images[k:k + batch], texts[k:k + batch])
        masks += [[r.mask for r in rs] for rs in results]
    sync(device)
    return (time.perf_counter() - start) / len(images), masks


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--scenes", type=int, default=64, help="shapes-world scenes")
    parser.add_argument("--real-images", type=int, default=4, help="real-size images per batch size")
    parser.add_argument("--compile", action="store_true", help="also time the real-size UNet under torch.compile")
    parser.add_argument("--json", help="write every figure here")
    parser.add_argument("--doc", default=str(ROOT / "docs" / "performance.md"))
    args = parser.parse_args(argv)
    device = choose_device(args.device)
    figures: dict = {"machine": machine(device), "device": device.type, "batches": args.batches}

    shapes = EditSegmenter.from_pretrained(str(ROOT / "benchmarks" / "shapes_world" / "checkpoint"), device=device)
    scenes = held_out(args.scenes, TEST_SEEDS + 95_000)
    images, texts = [s.image for s in scenes], [[s.expression] for s in scenes]
    per_image(shapes, images[:4], texts[:4], max(args.batches), device)  # warm-up
    reference = None
    figures["shapes"] = {}
    for batch in args.batches:
        seconds, masks = per_image(shapes, images, texts, batch, device)
        reference = reference or masks
        same = float(np.mean([np.array_equal(a, b) for x, y in zip(reference, masks) for a, b in zip(x, y)]))
        figures["shapes"][batch] = {"images_per_s": 1 / seconds, "masks_equal_to_batch_1": same}

    dtype = torch.float16 if device.type == "cuda" else torch.float32
    if device.type == "cpu" and bf16_pays_off(device, real_size_model(torch.device("meta"), dtype).unet):
        dtype = torch.bfloat16
    real = EditSegmenter(real_size_model(device, dtype))
    figures["real_size_dtype"] = str(dtype).replace("torch.", "")
    rng = np.random.default_rng(0)
    largest = max(args.batches)
    pictures = [rng.integers(0, 256, (512, 512, 3), dtype=np.uint8) for _ in range(max(args.real_images, largest))]
    prompts = [EXPRESSIONS] * len(pictures)
    per_image(real, pictures[:largest], prompts[:largest], largest, device)  # warm-up
    figures["real"] = {}
    for batch in args.batches:
        n = max(args.real_images, batch) // batch * batch
        seconds, _ = per_image(real, pictures[:n], prompts[:n], batch, device)
        figures["real"][batch] = {"images_per_s": 1 / seconds}
    if args.compile:
        start = time.perf_counter()
        real.model.pipe.unet = torch.compile(real.model.unet)
        per_image(real, pictures[:largest], prompts[:largest], largest, device)
        figures["compile_s"] = time.perf_counter() - start
        seconds, _ = per_image(real, pictures[:largest], prompts[:largest], largest, device)
        figures["real_compiled"] = {largest: {"images_per_s": 1 / seconds}}
    publish(figures, args.json, args.doc, write_doc)
    return figures


def write_doc(doc: Path, f: dict) -> None:
    base = f["batches"][0]

    def cell(table: dict, batch: int) -> str:
        rate = table[batch]["images_per_s"]
        shown = f"{rate:.1f}" if rate >= 1 else f"{rate:.3f} ({1 / rate:.1f} s each)"
        return f"{shown}, {rate / table[base]['images_per_s']:.2f}×"

    rows = "\n".join(
        f"| {b} | {cell(f['shapes'], b)} | {100 * f['shapes'][b]['masks_equal_to_batch_1']:.0f} % | "
        f"{cell(f['real'], b)} |" for b in f["batches"])
    compiled = ""
    if "compile_s" in f:
        (batch, rate), = f["real_compiled"].items()
        compiled = (f"\n\n`torch.compile` of the real-size UNet: {f['compile_s']:.0f} s to compile and warm up, then "
                    f"{rate['images_per_s']:.2f} images/s at batch {batch}.")
    section = f"""<!-- measured:batched-{f['device']}:start -->
Measured on {f['machine']} (`benchmarks/bench_batch.py`): images per second (and against batch
{base}) when `segment_images` takes that many images per batched VAE encode and UNet forward;
batch 1 is `set_image` + `segment_batch` as before. Shapes world: the trained checkpoint at 64 px,
one expression per scene, masks compared with batch 1's. Real size: InstructPix2Pix's architecture,
random weights, 512×512, two expressions per image, in {f['real_size_dtype']}.

| images per batch | shapes world: images/s | masks as batch 1's | real size: images/s |
|---|---|---|---|
{rows}{compiled}
<!-- measured:batched-{f['device']}:end -->"""
    replace_section(doc, f"batched-{f['device']}", section)


if __name__ == "__main__":
    main()
