"""How long does `refine` take — a re-threshold, a click — with the edge step, at 512 and 2048 px?

    python benchmarks/bench_refine.py

`refine` never runs the UNet: it re-scores the cached work-grid features and refines the score
map against the image. Its cost depends on the image's size and on the features' width, not on
the model's weights, so this runs the tiny test model's forward once per image and then puts
InstructPix2Pix-sized features on the result: a 64×64 work grid of 1920 channels (up_blocks.1 +
up_blocks.2), made from the picture's own colours and positions through a random projection, so
that k-means finds structure as it would in real features. Side by side in one run: the edge
step off and on, the first call (which clusters the background and computes the image-only part
of the guided filter) and later ones (which reuse both). Rewrites the "refine" section of
docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]

from bench_latency import cpu_name  # noqa: E402
from docsection import replace_section  # noqa: E402

WIDTH, GRID = 1920, 64


def structured_features(rgb: np.ndarray, seed: int = 0) -> np.ndarray:
    """D×64×64 unit vectors from colour and position, through a random projection, plus noise."""
    from napari_editseg.core.image import resize

    g = torch.Generator().manual_seed(seed)
    colour = resize(torch.from_numpy(rgb).permute(2, 0, 1)[None].float(), (GRID, GRID))[0]
    rows, cols = torch.meshgrid(torch.linspace(0, 1, GRID), torch.linspace(0, 1, GRID), indexing="ij")
    base = torch.cat([4 * colour, rows[None], cols[None]])  # 5×64×64
    features = torch.randn(WIDTH, 5, generator=g) @ base.reshape(5, -1) + 0.3 * torch.randn(WIDTH, GRID * GRID,
                                                                                          generator=g)
    return torch.nn.functional.normalize(features, dim=0).reshape(WIDTH, GRID, GRID).numpy()


def median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times))


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "refine-cpu.json"))
    parser.add_argument("--doc", default=str(ROOT / "docs" / "performance.md"))
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from skimage import data
    from skimage.transform import resize as resize_image

    from napari_editseg import EditSegmenter
    from napari_editseg.testing import build_tiny_pipeline

    with tempfile.TemporaryDirectory() as folder:
        build_tiny_pipeline().save_pretrained(folder)
        segmenter = EditSegmenter.from_pretrained(folder, device="cpu")
    astronaut = data.astronaut()
    results: dict = {"machine": cpu_name(), "threads": torch.get_num_threads(), "features": [WIDTH, GRID, GRID]}
    for side in (512, 2048):
        image = (resize_image(astronaut, (side, side), anti_aliasing=True) * 255).astype(np.uint8)
        segmenter.set_image(image)
        tiny = segmenter.segment("the woman's face")
        features = structured_features(image.astype(np.float32) / 255)
        prior = np.zeros((GRID, GRID), np.float32)
        prior[10:34, 22:42] = 1.0  # about the face
        row = {}
        for edge in ("none", "guided"):
            base = replace(tiny, features=features, prior_work=prior, prior_prototypes=None,
                           guide=type(tiny.guide)(tiny.guide.rgb))  # a fresh guide: nothing computed yet
            start = time.perf_counter()
            first = segmenter.refine(base, edge_refine=edge)
            row[f"first refine, edge_refine={edge}"] = 1000 * (time.perf_counter() - start)
            row[f"re-threshold, edge_refine={edge}"] = median_ms(
                lambda: segmenter.refine(first, mask_threshold=0.4), args.repeats)
            row[f"click, edge_refine={edge}"] = median_ms(
                lambda: segmenter.refine(first, positive=[(side // 2, side // 2)]), args.repeats)
            row[f"upsampling + edge step, edge_refine={edge}"] = 1000 * float(np.median(
                [segmenter.refine(first, mask_threshold=0.4).timings["edges"] for _ in range(args.repeats)]))
        results[str(side)] = row
        print(side, json.dumps(row, indent=1), flush=True)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(results, indent=1))
    write_doc(Path(args.doc), results)
    return results


def write_doc(doc: Path, r: dict) -> None:
    names = list(r["512"])
    lines = "\n".join(f"| {name} | {r['512'][name]:.1f} | {r['2048'][name]:.1f} |" for name in names)
    section = f"""<!-- measured:refine:start -->
Measured {time.strftime('%Y-%m-%d')} by `benchmarks/bench_refine.py` on **{r['machine']}, {r['threads']} torch
threads**: `refine` on a {r['features'][1]}×{r['features'][2]} work grid of {r['features'][0]} channels
(InstructPix2Pix's feature width), default settings otherwise (5 background prototypes, guided filter radius 2 cells);
milliseconds, medians of repeated calls (the first call: once).

| call | 512×512 image | 2048×2048 image |
|---|---|---|
{lines}
<!-- measured:refine:end -->"""
    replace_section(doc, "refine", section)


if __name__ == "__main__":
    main()
