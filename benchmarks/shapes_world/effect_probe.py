"""Probe: does the raw size of the expression's effect, inside the mask, tell "here" from "not here"?

    python -m benchmarks.shapes_world.effect_probe --scenes 300 --members m0 m1 m4 [--read noise]

The models' own full edits tell an absent expression at AUROC 0.66-0.76, best by how strongly the edit
changes the object it changes most (shapes-world.md, "Does the model know 'not here'?"); the one-step
confidence reaches 0.57-0.71. The relevance the prior reads is min-max scaled per image, so its size is
lost. Here, per expression, the raw effect on the decoder features against the baseline text (|F - B|
summed over channels, each feature block relative to the baseline's own size, averaged over the blocks),
read over the whole image, inside the default's mask, and inside against outside; AUROC of present
against absent expressions (each scene's own, and one naming nothing in it) per tuning member, on the
probe split's scenes. A probe, not a default.
"""

from __future__ import annotations

import numpy as np

from benchmarks.shapes_world.grounding_probe import auroc
from benchmarks.shapes_world.population import MEMBERS
from benchmarks.shapes_world.population_eval import member_scenes, probe_parser

EFFECTS = ("effect", "effect inside the mask", "effect inside against outside", "effect at its peak")


def effects(forward, k: int, mask: np.ndarray) -> list[float]:
    """Expression ``k``'s raw effect sizes (:data:`EFFECTS` order), none scaled per image."""
    import torch

    from napari_editseg.core.image import resize

    samples = forward.settings.noise_samples
    if forward.noise_pred is not None:  # relevance_from=noise: the noise prediction is what the baseline holds
        outputs = [forward.noise_pred[k * samples:(k + 1) * samples].float().mean(dim=0)]
    else:
        outputs = forward.maps(k).features
    per_block = []
    for feature, base in zip(outputs, forward.baseline):
        base = base.float().mean(dim=0)  # noise draws
        change = (feature.float() - base).abs().sum(dim=0) / base.abs().sum(dim=0).mean().clamp(min=1e-12)
        per_block.append(resize(change, mask.shape))
    change = torch.stack(per_block).mean(dim=0).numpy()
    inside = float(change[mask].mean()) if mask.any() else 0.0
    outside = float(change[~mask].mean()) if (~mask).any() else 0.0
    return [float(change.mean()), inside, inside / max(outside, 1e-12), float(change.max())]


def measure(member, scenes: int, split: str, read: str) -> dict:
    import torch

    from napari_editseg.core.edges import ImageGuide
    from napari_editseg.core.image import to_rgb_float
    from napari_editseg.core.stages import segment_maps

    segmenter, world, samples = member_scenes(member, split, scenes)
    absents = world.with_absent_expressions(samples, 0)
    settings = segmenter.resolve_settings(relevance_from=read)
    found = {"present": [], "absent": []}
    with torch.inference_mode():
        for i, sample in enumerate(samples):
            segmenter.set_image(sample.image)
            guide = ImageGuide(to_rgb_float(sample.image))
            forward = segmenter.forward([sample.expression, absents[i].expression], relevance_from=read)
            for k, kind in enumerate(("present", "absent")):
                result = segment_maps(forward.maps(k), settings, sample.mask.shape, guide=guide)
                found[kind].append(effects(forward, k, result.mask) + [result.confidence])
    return {kind: np.asarray(rows) for kind, rows in found.items()}


def main(argv=None) -> None:
    parser = probe_parser(__doc__, scenes=300)
    parser.add_argument("--read", choices=("features", "noise"), default="features",
                        help="what the effect is read on: the decoder features or the noise prediction")
    args = parser.parse_args(argv)
    for name in args.members:
        found = measure(MEMBERS[name], args.scenes, args.split, args.read)
        cells = [f"{signal} {auroc(found['present'][:, j], found['absent'][:, j]):.2f}"
                 for j, signal in enumerate((*EFFECTS, "the shipped confidence"))]
        print(f"{name} ({args.read}): " + ", ".join(cells), flush=True)


if __name__ == "__main__":
    main()
