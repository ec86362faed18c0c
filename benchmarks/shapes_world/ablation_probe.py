"""Probe: does each word's own effect, read by leaving it out, put the prior on the named object?

    python -m benchmarks.shapes_world.ablation_probe --scenes 150 --members m0 m1 m4   # --split tune: as first run

The default prior reads where the whole instruction changes the denoiser's features against the
template without the expression. A distractor that shares one word with the expression (the red
square for "red circle") is changed too. Here each content word's own effect is read in the same
forward: the features with the whole expression against those with the expression less that word
("red circle" against "circle" and against "red"); where every word matters (their geometric mean)
is the object all of them name. One extra row per word, no extra forward. Variants, each through
the default's steps 6-7 (the walk restarting at P0's top 20 %):

- ``default``: P0 from the whole expression's relevance (as shipped);
- ``words``: P0 = the geometric mean of the words' own effects;
- ``default x words``: P0 = the default's relevance times that mean.

Per tuning member: prior on the named object (%), mIoU, and the paired 95 % bootstrap interval of each
variant's gain over the default. Decides nothing by itself: a probe, not a default.
"""

from __future__ import annotations

import dataclasses

from benchmarks.shapes_world.population import MEMBERS
from benchmarks.shapes_world.population_eval import member_scenes, print_gains, probe_parser, record

VARIANTS = ("default", "words", "default x words")


def word_effect(full, without, grid):
    """Where leaving a word out changes the features: the relevance of the whole expression against
    the expression less the word, averaged over the feature blocks (as the default's relevance is)."""
    import torch

    from napari_editseg.core.image import resize
    from napari_editseg.core.relevance import relevance_map

    return torch.stack([resize(relevance_map(f[None], g[None]), grid)
                        for f, g in zip(full.features, without.features)]).mean(dim=0)


def priors(forward, words: list[str]) -> dict:
    """The variants' P0 sources (h×w, [0, 1]) for expression row 0 and its leave-one-out rows 1..n."""
    from napari_editseg.core.image import normalise01

    full = forward.maps(0)
    grid = tuple(full.relevance.shape)
    if len(words) < 2:  # one word: leaving it out is the template alone, the default's own baseline
        return {name: full.relevance for name in VARIANTS}
    effects = [word_effect(full, forward.maps(k + 1), grid).clamp(min=1e-6) for k in range(len(words))]
    mean = normalise01(sum(e.log() for e in effects).div(len(effects)).exp())
    return {"default": full.relevance, "words": mean, "default x words": normalise01(full.relevance * mean)}


def measure(member, scenes: int, split: str) -> dict:
    import torch

    from napari_editseg.core.edges import ImageGuide
    from napari_editseg.core.image import to_rgb_float
    from napari_editseg.core.stages import segment_maps

    segmenter, world, samples = member_scenes(member, split, scenes)
    settings, others = segmenter.resolve_settings(), world.with_other_expressions(samples)
    rows = {name: {"own": [], "other": [], "iou": []} for name in VARIANTS}
    with torch.inference_mode():
        for i, sample in enumerate(samples):
            segmenter.set_image(sample.image)
            shape, guide = sample.mask.shape, ImageGuide(to_rgb_float(sample.image))
            found = {}
            for key, expression in (("own", sample.expression), ("other", others[i].expression)):
                words = expression.split()
                left_out = [" ".join(w for j, w in enumerate(words) if j != k) for k in range(len(words))]
                forward = segmenter.forward([expression, *left_out] if len(words) > 1 else [expression])
                maps = forward.maps(0)
                found[key] = {name: segment_maps(dataclasses.replace(maps, relevance=p0), settings, shape, guide=guide)
                              for name, p0 in priors(forward, words).items()}
            for name in VARIANTS:
                record(rows[name], sample, found["own"][name], found["other"][name])
    return rows


def main(argv=None) -> None:
    parser = probe_parser(__doc__)
    args = parser.parse_args(argv)
    for name in args.members:
        print_gains(name, measure(MEMBERS[name], args.scenes, args.split))


if __name__ == "__main__":
    main()
