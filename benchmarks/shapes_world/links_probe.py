"""Probe: does cutting the affinity's links between cells whose features differ keep the walk on one object?

    python -m benchmarks.shapes_world.links_probe --scenes 150 --members m0 m1 m4   # --split tune: as first run

The walk with restart spreads P0 over the self-attention affinity A; where A links a cell of the
named object to a distractor's, the prior leaks across (AnchorDiff's remedy: cut links between
different objects). Here each cell keeps only its links to the ``k`` cells whose decoder features
(the first feature block, on the affinity grid) are most alike in cosine, rows renormalised, before
the default's steps 6-7 (the walk restarting at P0's top 20 %). Per tuning member: prior on the named
object (%), mIoU, and the paired 95 % bootstrap interval of each ``k``'s gain over the default.
A probe, not a default.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from benchmarks.shapes_world.population import MEMBERS
from benchmarks.shapes_world.population_eval import member_scenes, print_gains, probe_parser, record

KEPT = [4, 8, 16]  # links kept per cell, of the 8×8 = 64 cells of the shapes world's affinity grid
CELLS = 64


def part_by(result, prior: np.ndarray):
    """``result`` with its mask cut to the connected part holding ``prior``'s maximum (any grid), as keep=peak."""
    import torch
    from scipy import ndimage

    from napari_editseg.core.image import resize

    parts, n = ndimage.label(result.mask)
    if n < 2:
        return result
    weight = resize(torch.as_tensor(np.asarray(prior, np.float32)), result.mask.shape).numpy()
    best = 1 + int(np.argmax(ndimage.maximum(weight, parts, index=np.arange(1, n + 1))))
    return dataclasses.replace(result, mask=parts == best)


def measure(member, scenes: int, split: str) -> dict:
    import torch

    from napari_editseg.core.edges import ImageGuide
    from napari_editseg.core.image import to_rgb_float
    from napari_editseg.core.stages import segment_maps, with_links_cut

    segmenter, world, samples = member_scenes(member, split, scenes)
    settings, others = segmenter.resolve_settings(), world.with_other_expressions(samples)
    names = ["default", *(f"{k} links" for k in KEPT)]
    every = [*names, *(f"default x {k} links" for k in KEPT), *(f"default's parts, chosen by {k} links" for k in KEPT)]
    rows = {name: {"own": [], "other": [], "iou": []} for name in every}
    with torch.inference_mode():
        for i, sample in enumerate(samples):
            segmenter.set_image(sample.image)
            shape, guide = sample.mask.shape, ImageGuide(to_rgb_float(sample.image))
            forward = segmenter.forward([sample.expression, others[i].expression])
            cut = {}
            for name in names:
                found = []
                for k in range(2):
                    maps = forward.maps(k)
                    if name != "default":
                        maps = with_links_cut(maps, int(name.split()[0]) / CELLS)
                    found.append(segment_maps(maps, settings, shape, guide=guide))
                record(rows[name], sample, *found)
                cut[name] = found
            whole = [segment_maps(forward.maps(k), settings.replace(keep="all"), shape, guide=guide) for k in range(2)]
            for kept in KEPT:  # the default's mask, keeping its part where the cut walk's prior is highest
                record(rows[f"default's parts, chosen by {kept} links"], sample,
                       *[part_by(whole[k], cut[f"{kept} links"][k].prior) for k in range(2)])
            for kept in KEPT:  # the cut walk's prior only as a weight on the default's: P = P_default · P_cut
                both = []
                for k in range(2):
                    product = cut["default"][k].prior * cut[f"{kept} links"][k].prior
                    both.append(segment_maps(forward.maps(k), settings, shape, guide=guide,
                                             prior=product / max(float(product.max()), 1e-12)))
                record(rows[f"default x {kept} links"], sample, *both)
    return rows


def main(argv=None) -> None:
    parser = probe_parser(__doc__)
    parser.add_argument("--kept", nargs="+", type=int, default=list(KEPT))
    args = parser.parse_args(argv)
    KEPT[:] = args.kept
    for name in args.members:
        print_gains(name, measure(MEMBERS[name], args.scenes, args.split))


if __name__ == "__main__":
    main()
