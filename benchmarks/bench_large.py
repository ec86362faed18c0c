"""Large images and stacks on the shipped shapes-world checkpoint: tiling against the resize path,
volumes against slice by slice, and what the latent cache saves.

    OMP_NUM_THREADS=1 nice -n 19 python benchmarks/bench_large.py --json benchmarks/results/large-cpu.json

The checkpoint (``benchmarks/shapes_world/checkpoint``) sees 64-pixel pictures, so the size ratios
of InstructPix2Pix (512) on 4096² and 16384² images are 8 and 32: a 512² scene here is to this model
what a 4096² slide is to InstructPix2Pix (an object of radius 6-12 pixels shrinks to 0.75-1.5).

1. **Small objects.** Held-out shapes-world scenes (kinds colour+shape, shape, colour) rendered at
   their own scale into a large canvas of the same background, at a random place: the referred
   object is 0.04-0.2 % of a 512² image. IoU with the true object: ``tiling=off`` (the resize
   path) against ``tiling=always`` (coarse to fine), each in a fresh process for its peak memory
   (``VmHWM`` above the level after the model loaded) and seconds.
   **The issue's literal case** (``--only slide``): objects of 0.2-0.7 % of a 4096² image (a
   held-out scene drawn at 1/16 and enlarged), the resize path against tiles of 1024 pixels
   (``tile_size``) each resized to the model's 64.
2. **Cost against size**: the tiled path on 512², 1024² and 2048² canvases, seconds per tile visited.
3. **A 16384² image** held as a zarr array on disk (read region by region), with a 1024² box (the
   tiles it touches run): peak memory against the same run on a 512² image.
4. **Stacks**: scenes whose objects drift and grow or shrink over 50 planes; 3-D IoU and label
   consistency (planes where the mask's largest overlap is the referred object, of the planes it
   spans) for ``segment_volume`` against slice by slice.
5. **Cache**: a tiled 512² image opened a second time with the disk cache: seconds and VAE passes.

Writes --json and the measured section of docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_memory import peak_kib, settle  # noqa: E402
from docsection import publish, replace_section  # noqa: E402

from napari_editseg import shapes_world  # noqa: E402

CHECKPOINT = ROOT / "benchmarks" / "shapes_world" / "checkpoint"
KINDS = ("colour+shape", "shape", "colour")  # spatial words may change meaning once objects move
MIB = 1024
SLIDE_SCALE = 16  # slide_scene: the objects' enlargement; tiles of 64 x this pixels show them at the model's scale


def big_scene(seed: int, size: int) -> tuple[np.ndarray, np.ndarray, str]:
    """A held-out scene's objects at their own scale, placed at random in a ``size``² canvas of the
    scene's background: (uint8 image, bool mask of the referred object, expression)."""
    sample = shapes_world.make_sample(shapes_world.TEST_SEEDS + seed, 64, KINDS[seed % len(KINDS)])
    rng = np.random.default_rng(seed)
    dr, dc = rng.integers(0, size - 64, 2)
    objects = [replace(o, row=o.row + dr, col=o.col + dc) for o in sample.objects]
    state = int(np.random.default_rng(shapes_world.TEST_SEEDS + seed).integers(2**31))
    image = shapes_world.render(objects, [o.colour for o in objects], size, state)
    return image, shapes_world.shape_mask(objects[sample.index], size), sample.expression


def slide_scene(seed: int, size: int) -> tuple[np.ndarray, np.ndarray, str]:
    """The issue's literal case: a held-out scene's objects at 1/16 of ``size`` (each 0.2-0.7 % of the
    image), drawn on a canvas of ``size``/16 and enlarged 16 times, so that a tile of 1024 pixels resized
    to the model's 64 shows them as the model was trained to see them (noise included), and the whole
    image resized to 64 shows them at a quarter of that: (uint8 image, bool mask, expression)."""
    sample = shapes_world.make_sample(shapes_world.TEST_SEEDS + seed, 64, KINDS[seed % len(KINDS)])
    small = size // SLIDE_SCALE
    rng = np.random.default_rng(seed)
    dr, dc = rng.integers(0, small - 64, 2)
    objects = [replace(o, row=o.row + dr, col=o.col + dc) for o in sample.objects]
    state = int(np.random.default_rng(shapes_world.TEST_SEEDS + seed).integers(2**31))
    image = shapes_world.render(objects, [o.colour for o in objects], small, state)
    truth = shapes_world.shape_mask(objects[sample.index], small)

    def enlarge(array: np.ndarray) -> np.ndarray:
        return np.repeat(np.repeat(array, SLIDE_SCALE, axis=0), SLIDE_SCALE, axis=1)

    return enlarge(image), enlarge(truth), sample.expression


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


def segmenter():
    from napari_editseg import EditSegmenter

    return EditSegmenter.from_pretrained(str(CHECKPOINT), device="cpu")


# -- one measured run, in a process of its own --------------------------------------------------
def one_run(mode: str, seed: int, size: int) -> dict:
    """A single segmentation: its IoU, seconds, tiles and peak memory above the loaded model's level."""
    from napari_editseg.core.tiling import segment_tiled

    model = segmenter()
    box, tile_size = None, "auto"
    if mode == "zarr":
        image, truth, expression, box = zarr_scene(seed, size)
    elif mode.startswith("slide"):
        (image, truth, expression), tile_size = slide_scene(seed, size), 64 * SLIDE_SCALE
    else:
        image, truth, expression = big_scene(seed, size)
    base = settle()
    start = time.perf_counter()
    if mode in ("off", "slide-off"):
        model.set_image(image)
        mask, tiles = model.segment(expression, tiling="off").mask, 0
    else:
        result = segment_tiled(model, image, expression, box=box, tiling="always", tile_size=tile_size)
        mask, tiles = (result.full_mask() if truth is not None else None), len(result.tiles)
    seconds = time.perf_counter() - start
    peak = peak_kib() - base
    return {"mode": mode, "seed": seed, "size": size, "iou": None if truth is None else iou(mask, truth),
            "seconds": seconds, "tiles": tiles, "peak_mib": peak / MIB, "process_peak_mib": peak_kib() / MIB}


def zarr_scene(seed: int, size: int):
    """A ``size``² zarr image on disk (made once per size, chunk by chunk) with one small scene pasted at
    its centre, and a box of 1024² (or the whole image, when smaller) around it: (lazy array, None, expression, box)."""
    import zarr

    folder = Path(tempfile.gettempdir()) / f"editseg-bench-{size}.zarr"
    scene, _, expression = big_scene(seed, 256)
    centre = size // 2
    if not folder.exists():
        array = zarr.open_array(str(folder), mode="w", shape=(size, size, 3), chunks=(1024, 1024, 3), dtype="uint8")
        rng = np.random.default_rng(0)
        for r in range(0, size, 1024):
            for c in range(0, size, 1024):
                noise = rng.normal(0.5, 0.045, (1024, 1024, 3))
                array[r:r + 1024, c:c + 1024] = (np.clip(noise, 0, 1) * 255).astype(np.uint8)
        array[centre - 128:centre + 128, centre - 128:centre + 128] = scene
    half = min(512, size // 2)
    box = (centre - half, centre - half, centre + half, centre + half)
    return zarr.open_array(str(folder), mode="r"), None, expression, box


def in_process(mode: str, seed: int, size: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--one", mode, str(seed), str(size)], capture_output=True,
                         text=True, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return json.loads(out.stdout.strip().splitlines()[-1])


# -- stacks -----------------------------------------------------------------------------------
def moving_stack(seed: int, depth: int) -> tuple[np.ndarray, np.ndarray, list, str, int]:
    """A scene whose objects drift (up to 0.4 px a plane) and grow or shrink (up to 30 % over the
    stack): (Z×64×64×3 uint8, Z×64×64 bool truth, per plane the masks of every object, expression, index)."""
    sample = shapes_world.make_sample(shapes_world.TEST_SEEDS + 500 + seed, 64, KINDS[seed % len(KINDS)])
    rng = np.random.default_rng(seed)
    velocity = rng.uniform(-0.4, 0.4, (len(sample.objects), 2))
    growth = rng.uniform(-0.3, 0.3, len(sample.objects))
    state = int(rng.integers(2**31))
    planes, truth, others = [], [], []
    for z in range(depth):
        t = z / max(1, depth - 1)
        objects = [replace(o, row=float(np.clip(o.row + velocity[k, 0] * z, 8, 56)),
                           col=float(np.clip(o.col + velocity[k, 1] * z, 8, 56)), radius=o.radius * (1 + growth[k] * t))
                   for k, o in enumerate(sample.objects)]
        planes.append(shapes_world.render(objects, [o.colour for o in objects], 64, state))
        masks = [shapes_world.shape_mask(o, 64) for o in objects]
        for k in range(len(masks)):  # a later object covers an earlier one where they meet
            for later in masks[k + 1:]:
                masks[k] &= ~later
        truth.append(masks[sample.index])
        others.append(masks)
    return np.stack(planes), np.stack(truth), others, sample.expression, sample.index


def covered(mask: np.ndarray, objects: list) -> int:
    """The object the mask overlaps most (-1 for an empty mask or one on no object)."""
    overlaps = [np.logical_and(mask, m).sum() for m in objects]
    return int(np.argmax(overlaps)) if mask.any() and max(overlaps) > 0 else -1


def consistent(mask: np.ndarray, objects: list, index: int) -> bool:
    """The mask's largest overlap is the referred object (an empty mask is not)."""
    return covered(mask, objects) == index


def kept_one_object(masks: np.ndarray, objects: list, planes: list) -> float:
    """Share of ``planes`` whose mask covers the same object as the first of them: whether ONE
    object keeps its label through the stack, whichever object the expression led to."""
    covers = [covered(masks[z], objects[z]) for z in planes]
    return float(np.mean([c == covers[0] and c >= 0 for c in covers])) if covers else 0.0


def stacks(count: int, depth: int) -> dict:
    from napari_editseg.core.volume import segment_volume

    model = segmenter()
    rows = []
    for seed in range(count):
        planes, truth, objects, expression, index = moving_stack(seed, depth)
        start = time.perf_counter()
        volume = segment_volume(model, planes, expression)
        volume_seconds = time.perf_counter() - start
        start = time.perf_counter()
        alone = []
        for plane in planes:
            model.set_image(plane)
            alone.append(model.segment(expression).mask)
        alone = np.stack(alone)
        slice_seconds = time.perf_counter() - start
        spanned = list(volume.planes)
        rows.append({
            "expression": expression, "planes": depth, "spanned": len(spanned),
            "volume_iou": iou(volume.mask, truth), "slices_iou": iou(alone, truth),
            "volume_consistency_spanned": float(np.mean([consistent(volume.mask[z], objects[z], index)
                                                         for z in spanned])) if spanned else 0.0,
            "volume_consistency_all": float(np.mean([consistent(volume.mask[z], objects[z], index)
                                                     for z in range(depth)])),
            "slices_consistency_all": float(np.mean([consistent(alone[z], objects[z], index) for z in range(depth)])),
            # one object through the planes, right or wrong: from the volume's start plane outwards
            # (slice by slice: from the same start plane, its planes in the same span)
            "volume_one_object": kept_one_object(volume.mask, objects, [volume.start, *spanned]),
            "slices_one_object": kept_one_object(alone, objects, [volume.start, *spanned]),
            "volume_seconds": volume_seconds, "slices_seconds": slice_seconds, "stopped": volume.stopped,
        })
        print(json.dumps(rows[-1]), flush=True)
    return {"rows": rows, **{key: float(np.mean([r[key] for r in rows])) for key in rows[0]
                             if isinstance(rows[0][key], (int, float))}}


def cache_hit(seed: int, size: int) -> dict:
    from napari_editseg.core.latent_cache import LatentCache
    from napari_editseg.core.tiling import segment_tiled
    from napari_editseg.testing import CallCounter

    image, _, expression = big_scene(seed, size)
    seconds, encodes = [], []
    with tempfile.TemporaryDirectory() as folder:
        for _ in range(2):
            model = segmenter()  # a new session each time: only the disk cache carries over
            model.latent_cache = LatentCache(folder)
            with CallCounter(model.model.pipe.vae.encoder) as vae:
                start = time.perf_counter()
                segment_tiled(model, image, expression, tiling="always")
                seconds.append(time.perf_counter() - start)
            encodes.append(vae.calls)
    return {"size": size, "first_seconds": seconds[0], "reopen_seconds": seconds[1], "first_vae_passes": encodes[0],
            "reopen_vae_passes": encodes[1]}


def small_objects(scenes: int, size: int, modes: tuple[str, str] = ("off", "always")) -> dict:
    """Each scene by the resize path and the tiled one (``modes``), each run in a fresh process."""
    rows = []
    for seed in range(scenes):
        for mode in modes:
            rows.append(in_process(mode, seed, size))
            print(json.dumps(rows[-1]), flush=True)

    def mean(mode: str, key: str) -> float:
        return float(np.mean([r[key] for r in rows if r["mode"] == mode]))

    return {"size": size, "scenes": scenes, "rows": rows,
            **{f"{mode.removeprefix('slide-')}_{key}": mean(mode, key) for mode in modes
               for key in ("iou", "seconds", "peak_mib", "process_peak_mib", "tiles")}}


def small_objects_table(small: dict, tiled: str) -> list[str]:
    lines = ["| path | mean IoU | seconds | peak memory above the model (MiB) | process peak (MiB) | tiles run |",
             "|---|---|---|---|---|---|"]
    for mode, name in (("off", "resize (tiling=off)"), ("always", tiled)):
        key = mode if mode + "_iou" in small else "tiles"
        lines.append(f"| {name} | {small[key + '_iou']:.3f} | {small[key + '_seconds']:.1f} | "
                     f"{small[key + '_peak_mib']:.0f} | {small[key + '_process_peak_mib']:.0f} | "
                     f"{small[key + '_tiles']:.0f} |")
    ious = {mode: [r["iou"] for r in small["rows"] if r["mode"].removeprefix("slide-") == mode]
            for mode in ("off", "always", "tiles")}
    tiled_ious = ious["always"] or ious["tiles"]
    pairs = ", ".join(f"{a:.2f} → {b:.2f}" for a, b in zip(ious["off"], tiled_ious))
    lines += ["", f"Per scene (resize → tiled): {pairs}."]
    return lines


def write_doc(doc: Path, figures: dict) -> None:
    small, cost, stack, cache = figures["small"], figures["cost"], figures["stacks"], figures["cache"]
    lines = [
        "<!-- measured:large:start -->",
        f"Measured by `benchmarks/bench_large.py` ({figures['machine']}; shapes-world checkpoint, 64-pixel "
        "model input, so a 512² scene is to it what a 4096² slide is to InstructPix2Pix).",
        "",
        f"**Small objects, {small['scenes']} scenes of {small['size']}²** (referred object 0.04-0.2 % of the image):",
        "",
        *small_objects_table(small, "coarse to fine (tiling=always)"),
    ]
    if figures.get("slide"):
        slide = figures["slide"]
        side = 64 * SLIDE_SCALE
        lines += ["", f"**Objects of 0.2-0.7 % of a {slide['size']}² image, {slide['scenes']} scenes** (the scene "
                  f"drawn at 1/{SLIDE_SCALE} and enlarged; tiles of {side} pixels, `tile_size={side}`, "
                  "each resized to the model's 64):", "",
                  *small_objects_table(slide, f"coarse to fine (tiling=always, tile_size={side})"),
                  "", f"Mean IoU ratio, tiled to resize: {slide['tiles_iou'] / max(slide['off_iou'], 1e-9):.1f}x."]
    lines += ["", "**Cost against size** (tiled path, one scene each):", "",
              "| image | tiles run | seconds | seconds per tile |", "|---|---|---|---|"]
    for row in cost:
        lines.append(f"| {row['size']}² | {row['tiles']} | {row['seconds']:.1f} | "
                     f"{row['seconds'] / max(1, row['tiles']):.3f} |")
    if figures.get("zarr"):
        big, reference = figures["zarr"], figures["zarr_reference"]
        lines += ["", f"**A {big['size']}² image on disk (zarr), with a 1024² box**: {big['tiles']} tiles, "
                  f"{big['seconds']:.1f} s, process peak {big['process_peak_mib']:.0f} MiB "
                  f"({big['peak_mib']:.0f} MiB above the loaded model) against {reference['process_peak_mib']:.0f} "
                  f"MiB ({reference['peak_mib']:.0f} MiB) for a whole {reference['size']}² image the same way: "
                  f"{big['process_peak_mib'] / reference['process_peak_mib']:.2f}x."]
    lines += ["", f"**Stacks**: {len(stack['rows'])} shapes-world scenes over {stack['rows'][0]['planes']} planes "
              "(objects drift up to 0.4 px a plane and grow or shrink up to 30 %):", "",
              "| | 3-D IoU | planes where the mask is the referred object | seconds per stack |", "|---|---|---|---|",
              f"| slice by slice | {stack['slices_iou']:.3f} | {stack['slices_consistency_all']:.0%} | "
              f"{stack['slices_seconds']:.1f} |",
              f"| one object (segment_volume) | {stack['volume_iou']:.3f} | {stack['volume_consistency_all']:.0%} "
              f"(of the planes it spans: {stack['volume_consistency_spanned']:.0%}; it spans "
              f"{stack['spanned']:.0f} of {stack['rows'][0]['planes']}) | {stack['volume_seconds']:.1f} |",
              "", "One object through the planes, right or wrong (share of the spanned planes whose mask covers "
              "the object the start plane's mask covers): one object (segment_volume) "
              f"{stack['volume_one_object']:.0%}, slice by slice over the same planes "
              f"{stack['slices_one_object']:.0%}.",
              "", f"**Cache**: a tiled {cache['size']}² image reopened in a new session: "
              f"{cache['first_seconds']:.1f} s and {cache['first_vae_passes']} VAE passes the first time, "
              f"{cache['reopen_seconds']:.1f} s and "
              f"{cache['reopen_vae_passes']} VAE passes the second.",
              "<!-- measured:large:end -->"]
    replace_section(doc, "large", "\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenes", type=int, default=6)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--cost-sizes", default="512,1024,2048")
    parser.add_argument("--zarr-size", type=int, default=16384, help="0 skips the on-disk run")
    parser.add_argument("--stacks", type=int, default=4)
    parser.add_argument("--depth", type=int, default=50)
    parser.add_argument("--machine", default="CPU, 1 thread on a shared 2-core machine")
    parser.add_argument("--json")
    parser.add_argument("--doc", default=str(ROOT / "docs" / "performance.md"))
    parser.add_argument("--slide-size", type=int, default=4096, help="the literal large image; 0 skips it")
    parser.add_argument("--slide-scenes", type=int, default=12)
    parser.add_argument("--only", choices=("stacks", "slide"),
                        help="measure this part again; the other figures are read from --json")
    parser.add_argument("--one", nargs=3, metavar=("MODE", "SEED", "SIZE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one_run(args.one[0], int(args.one[1]), int(args.one[2]))))
        return
    if args.only:
        figures = json.loads(Path(args.json).read_text())
        if args.only == "stacks":
            figures["stacks"] = stacks(args.stacks, args.depth)
        else:
            figures["slide"] = small_objects(args.slide_scenes, args.slide_size, ("slide-off", "slide-tiles"))
        publish(figures, args.json, args.doc, write_doc)
        return
    figures = {"machine": args.machine, "small": small_objects(args.scenes, args.size)}
    if args.slide_size:
        figures["slide"] = small_objects(args.slide_scenes, args.slide_size, ("slide-off", "slide-tiles"))
    figures["cost"] = [in_process("always", 0, int(s)) for s in args.cost_sizes.split(",")]
    print(json.dumps(figures["cost"]), flush=True)
    if args.zarr_size:
        figures["zarr"] = in_process("zarr", 0, args.zarr_size)
        figures["zarr_reference"] = in_process("zarr", 0, 512)
        print(json.dumps([figures["zarr"], figures["zarr_reference"]]), flush=True)
    figures["stacks"] = stacks(args.stacks, args.depth)
    figures["cache"] = cache_hit(0, args.size)
    publish(figures, args.json, args.doc, write_doc)


if __name__ == "__main__":
    main()
