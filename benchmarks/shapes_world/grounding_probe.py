"""Does the prior stay on the named object, and can one forward say "not here"? Probed per model.

For each scene, ONE batched forward holds the rows of: the scene's own expression, another
scene's expression (the control), an expression naming nothing in the scene (absent), and a few
decoy expressions of the same kind (random colour+shape pairs); one more forward runs the
relevance baseline (the template without the expression). From the raw, un-normalised effects of
each row on the feature blocks and each row's self-attention, every prior variant and every
confidence candidate below is computed offline, so adding one costs no forward.

Prior variants (all start from the relevance map P0 the method computes; ``A`` is the row's
self-attention on its grid):

- ``P0``: no propagation; ``A^k P0``: the method's propagation, k steps;
- ``rwr α``: random walk with restart, P ← (1−α)·A·P + α·P0, to convergence (personalised
  PageRank): the prior cannot leave what P0 found, only spread within what A joins to it;
- ``peak-kept``: A^k P0, but P0 itself when propagation moves the prior's peak off P0's top region;
- ``decoy contrast``: P0 from the expression's effect minus the decoys' mean effect (what only
  THIS expression changes), then propagated like the method.

Confidence candidates are raw signals (no min-max scaling, which makes every map look like it
holds a target) and their ranks among the decoys; ``fit_confidence`` fits a logistic fusion.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Optional

import numpy as np
import torch

from napari_editseg.core.image import normalise01, resize
from napari_editseg.core.instruction import baseline_text
from napari_editseg.core.mask import to_image_size
from napari_editseg.core.relevance import robust_clip
from napari_editseg.core.stages import work_grid_of

ROWS = ("own", "other", "absent")  # the expression rows whose priors are studied; decoys follow them
DECOYS = 6


@dataclass
class Capture:
    """What one scene's forwards gave, kept for offline study (torch, CPU)."""

    effects: list  # per feature block: R×h×w raw |features(row) − features(baseline)| summed over channels
    affinity: torch.Tensor  # 3×N×N self-attention of the own, other and absent rows
    affinity_grid: tuple
    latent_grid: tuple
    work_grid: tuple
    base: object  # the own expression's Segmentation with the defaults (features, guide, ...)
    absent_base: object  # the absent expression's Segmentation with the defaults


def decoys_for(scene, world, rng, n: int = DECOYS) -> list[str]:
    """Colour+shape expressions of the world, drawn at random (some may be present: a decoy
    stands for "any expression of this kind", known to the user of a real model too)."""
    pairs = [(c, s) for c in world.COLOURS for s in world.SHAPES]
    picks = rng.choice(len(pairs), size=n, replace=False)
    return [f"{pairs[i][0]} {pairs[i][1]}" for i in picks]


def vocabulary_decoys(tokenizer, expression: str, rng, n: int = DECOYS, common: int = 2000) -> list[str]:
    """Decoys any model has: expressions of as many words as ``expression``, each a whole-word
    token among the tokenizer's ``common`` first merges (BPE merges come in order of frequency),
    alphabetic, three letters or more, not a word of the expression."""
    vocab = tokenizer.get_vocab()
    own = set(expression.split())
    words = sorted({t[:-4] for t in vocab if t.endswith("</w>") and t[:-4].isalpha() and len(t) >= 7
                    and t[:-4] not in own}, key=lambda t: vocab[t + "</w>"])[:common]
    length = len(expression.split())
    return [" ".join(rng.choice(words, size=length)) for _ in range(n)]


def capture(segmenter, scene, other: str, absent: str, decoys: list[str]) -> Capture:
    """The forwards of one scene (see the module's docstring)."""
    segmenter.set_image(scene.image)
    texts = [scene.expression, other, absent, *decoys]
    settings = segmenter.resolve_settings()
    head, _, word = baseline_text(settings.instruction_template, "template").rpartition(" ")
    with torch.inference_mode():
        rows = segmenter.forward(texts, prior_source="attention")
        base = segmenter.forward([word], prior_source="attention", instruction_template=head + " {}")
    maps, baseline = [rows.maps(i) for i in range(len(rows))], base.maps(0)
    effects = [(torch.stack([m.features[k] for m in maps]).float() - baseline.features[k].float()).abs().sum(dim=1)
               for k in range(len(baseline.features))]
    return Capture(effects=effects, affinity=torch.stack([m.affinity for m in maps[:len(ROWS)]]).float(),
                   affinity_grid=maps[0].affinity_grid, latent_grid=maps[0].latent_grid,
                   work_grid=work_grid_of(rows.latent_grid, settings.work_resolution),
                   base=segmenter.segment(scene.expression), absent_base=segmenter.segment(absent))


# -- priors -----------------------------------------------------------------------------------------
def relevance_p0(c: Capture, row: int, contrast: bool = False) -> torch.Tensor:
    """The method's relevance P0 of ``row`` on the work grid (robust clip and min-max per block,
    blocks averaged); ``contrast``: the decoys' mean effect subtracted first."""
    maps = []
    for effect in c.effects:
        e = effect[row]
        if contrast:
            e = (e - effect[len(ROWS):].mean(dim=0)).clamp(min=0.0)
        maps.append(resize(normalise01(robust_clip(e)), c.latent_grid))
    return resize(torch.stack(maps).mean(dim=0), c.work_grid)


def on_affinity_grid(c: Capture, p: torch.Tensor) -> torch.Tensor:
    return resize(p, c.affinity_grid).reshape(-1, 1)


def back(c: Capture, p: torch.Tensor) -> torch.Tensor:
    return normalise01(resize(p.reshape(c.affinity_grid), c.work_grid))


def propagated(c: Capture, row: int, p0: torch.Tensor, steps: int = 2) -> torch.Tensor:
    if steps == 0:
        return normalise01(p0)
    p = on_affinity_grid(c, p0)
    for _ in range(steps):
        p = c.affinity[row] @ p
    return back(c, p)


def random_walk_with_restart(c: Capture, row: int, p0: torch.Tensor, alpha: float, steps: int = 30
                             ) -> torch.Tensor:
    start = on_affinity_grid(c, p0)
    p = start
    for _ in range(steps):
        p = (1 - alpha) * c.affinity[row] @ p + alpha * start
    return back(c, p)


def peak_kept(c: Capture, row: int, p0: torch.Tensor, steps: int = 2, share: float = 0.5) -> torch.Tensor:
    """The propagated prior if its peak stays where P0 is at least ``share`` of its maximum, else P0."""
    p = propagated(c, row, p0, steps)
    peak = np.unravel_index(int(torch.argmax(p)), tuple(p.shape))
    return p if p0[peak] >= share * p0.max() else normalise01(p0)


def peak_region(p0: torch.Tensor, share: float = 0.5) -> torch.Tensor:
    """P0 kept only on its connected part above ``share`` of its maximum that holds the maximum."""
    from skimage.measure import label

    p = p0.numpy()
    parts = label(p >= share * p.max(), connectivity=2)
    peak = np.unravel_index(int(np.argmax(p)), p.shape)
    return p0 * torch.from_numpy(parts == parts[peak]).float()


def feature_filter(c: Capture, p0: torch.Tensor, sigma: float = 3.0, tau: float = 0.1, steps: int = 2
                   ) -> torch.Tensor:
    """P0 averaged over nearby cells whose features look alike (a bilateral filter in the
    denoiser's feature space): the prior becomes each object's mean, bounded by its edges."""
    f = torch.from_numpy(c.base.features).flatten(1)  # D×N, unit columns
    h, w = c.base.features.shape[1:]
    rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    xy = torch.stack([rows.flatten(), cols.flatten()], 1).float()
    weights = torch.exp((f.T @ f - 1) / tau) * torch.exp(-torch.cdist(xy, xy) ** 2 / (2 * sigma ** 2))
    weights = weights / weights.sum(dim=1, keepdim=True)
    p = resize(p0, (h, w)).flatten()
    for _ in range(steps):
        p = weights @ p
    return normalise01(resize(p.reshape(h, w), c.work_grid))


def region_pool(c: Capture, p0: torch.Tensor, k: int = 8) -> torch.Tensor:
    """P0's mean over each connected part of a k-means clustering of the features."""
    from skimage.measure import label

    from napari_editseg.core.discriminate import kmeans_means

    f = torch.from_numpy(c.base.features)
    d, h, w = f.shape
    centres = kmeans_means(f.flatten(1), k)
    assign = torch.cdist(f.flatten(1).T, centres).argmin(dim=1).reshape(h, w).numpy()
    parts = label(assign + 1, connectivity=1, background=0)
    p = resize(p0, (h, w)).numpy()
    pooled = np.zeros_like(p)
    for part in range(1, parts.max() + 1):
        pooled[parts == part] = p[parts == part].mean()
    return normalise01(resize(torch.from_numpy(pooled), c.work_grid))


VARIANTS: dict[str, Callable[[Capture, int], torch.Tensor]] = {
    "P0 (propagation_steps=0)": lambda c, r: normalise01(relevance_p0(c, r)),
    "A^1 P0": lambda c, r: propagated(c, r, relevance_p0(c, r), 1),
    "A^2 P0 (default)": lambda c, r: propagated(c, r, relevance_p0(c, r), 2),
    "A^4 P0": lambda c, r: propagated(c, r, relevance_p0(c, r), 4),
    "rwr α=0.3": lambda c, r: random_walk_with_restart(c, r, relevance_p0(c, r), 0.3),
    "rwr α=0.5": lambda c, r: random_walk_with_restart(c, r, relevance_p0(c, r), 0.5),
    "rwr α=0.7": lambda c, r: random_walk_with_restart(c, r, relevance_p0(c, r), 0.7),
    "peak-kept A^2 P0": lambda c, r: peak_kept(c, r, relevance_p0(c, r)),
    "decoy contrast P0": lambda c, r: normalise01(relevance_p0(c, r, contrast=True)),
    "decoy contrast, A^2": lambda c, r: propagated(c, r, relevance_p0(c, r, contrast=True), 2),
    "decoy contrast, rwr α=0.5": lambda c, r: random_walk_with_restart(c, r, relevance_p0(c, r, contrast=True), 0.5),
    "decoy contrast, rwr α=0.15": lambda c, r: random_walk_with_restart(c, r, relevance_p0(c, r, contrast=True), 0.15),
    "rwr α=0.15": lambda c, r: random_walk_with_restart(c, r, relevance_p0(c, r), 0.15),
    "A^2 P0 × decoy contrast P0": lambda c, r: normalise01(propagated(c, r, relevance_p0(c, r), 2)
                                                           * normalise01(relevance_p0(c, r, contrast=True))),
    "A^2 (P0 on its peak region)": lambda c, r: propagated(c, r, peak_region(relevance_p0(c, r)), 2),
    "A^2 (P0 on its peak region, share 0.3)": lambda c, r: propagated(c, r, peak_region(relevance_p0(c, r), 0.3), 2),
    "A^2 (contrast P0 on its peak region)": lambda c, r: propagated(c, r, peak_region(relevance_p0(c, r, True)), 2),
    "feature filter P0": lambda c, r: feature_filter(c, relevance_p0(c, r)),
    "feature filter P0, σ=6": lambda c, r: feature_filter(c, relevance_p0(c, r), sigma=6.0),
    "feature filter P0, τ=0.3": lambda c, r: feature_filter(c, relevance_p0(c, r), tau=0.3),
    "feature filter contrast P0": lambda c, r: feature_filter(c, relevance_p0(c, r, True)),
    "region pool P0": lambda c, r: region_pool(c, relevance_p0(c, r)),
    "region pool contrast P0": lambda c, r: region_pool(c, relevance_p0(c, r, True)),
    "A^2 P0 × P0": lambda c, r: normalise01(propagated(c, r, relevance_p0(c, r), 2) * relevance_p0(c, r)),
    "A^2 (P0 × decoy contrast P0)": lambda c, r: propagated(c, r, relevance_p0(c, r) * relevance_p0(c, r, True), 2),
}


def prior_choice(prior: np.ndarray, masks: list) -> int:
    return int(np.argmax([prior[m].mean() for m in masks]))


def mask_of(segmenter, base, prior_work: torch.Tensor):
    """Steps 6-7 of the defaults on a given work-grid prior (no forward)."""
    return segmenter.refine(replace(base, prior_work=prior_work.numpy(), prior_prototypes=None)).mask


# -- confidence candidates --------------------------------------------------------------------------
def confidence_signals(c: Capture, row: int) -> dict:
    """Raw signals for "the expression names something here" for one expression row."""
    values = {}
    n_rows = len(ROWS)
    mask = torch.from_numpy((c.base if row == 0 else c.absent_base).mask.astype(np.float32))
    for j, effect in enumerate(c.effects):
        inside = resize(mask, tuple(effect.shape[-2:])) > 0.5
        if inside.any():
            own_in = float(effect[row][inside].mean())
            decoys_in = effect[n_rows:][:, inside].mean(dim=1)
            values[f"b{j} effect in the mask / decoys'"] = own_in / max(float(decoys_in.mean()), 1e-9)
            values[f"b{j} rank in the mask among decoys"] = float((decoys_in < own_in).float().mean())
        else:
            values[f"b{j} effect in the mask / decoys'"] = 0.0
            values[f"b{j} rank in the mask among decoys"] = 0.0
        e, decoys = effect[row].flatten(), effect[n_rows:].flatten(1)
        mean, top = float(e.mean()), float(torch.topk(e, max(1, e.numel() // 10)).values.mean())
        decoy_means = decoys.mean(dim=1)
        decoy_tops = torch.topk(decoys, max(1, e.numel() // 10), dim=1).values.mean(dim=1)
        values[f"b{j} effect"] = mean
        values[f"b{j} focus (top tenth / mean)"] = top / max(mean, 1e-9)
        values[f"b{j} effect / decoys'"] = mean / max(float(decoy_means.mean()), 1e-9)
        values[f"b{j} top tenth / decoys'"] = top / max(float(decoy_tops.mean()), 1e-9)
        values[f"b{j} rank of effect among decoys"] = float((decoy_means < mean).float().mean())
        values[f"b{j} rank of focus among decoys"] = float(
            ((decoy_tops / decoy_means.clamp(min=1e-9)) < top / max(mean, 1e-9)).float().mean())
        contrast = (effect[row] - effect[n_rows:].mean(dim=0)).clamp(min=0.0)
        values[f"b{j} contrast mass / effect"] = float(contrast.sum() / effect[row].sum().clamp(min=1e-9))
    p0 = relevance_p0(c, row)
    p = propagated(c, min(row, 2), p0, 2)
    a, b = p0 >= torch.quantile(p0.flatten(), 0.9), p >= torch.quantile(p.flatten(), 0.9)
    values["P0 and P agree (IoU of top tenths)"] = float((a & b).sum() / (a | b).sum().clamp(min=1))
    return values


def segmentation_signals(result) -> dict:
    """What the method's own result says: the shipped confidence and the prototypes' separation."""
    s, m = result.scores, result.mask
    separation = float(s[m].mean() - s[~m].mean()) if m.any() and (~m).any() else 0.0
    fg, bg = result.fg_prototypes, result.bg_prototypes
    closest = float((fg @ bg.T).max()) if len(fg) and len(bg) else 1.0
    return {"peak dominance (shipped confidence)": float(result.confidence), "score separation": separation,
            "fg-bg prototype similarity": closest, "mask area": float(m.mean())}


def fusion_features(signals: dict, names: list[str]) -> np.ndarray:
    return np.array([signals[n] for n in names], np.float64)


def fit_confidence(present: list[dict], absent: list[dict], names: list[str], l2: float = 1.0
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A logistic fusion of the named signals: (mean, scale, weights with the bias last), fitted
    by Newton's method with an L2 penalty on standardised signals."""
    x = np.array([fusion_features(s, names) for s in present + absent])
    y = np.array([1.0] * len(present) + [0.0] * len(absent))
    mean, scale = x.mean(axis=0), x.std(axis=0) + 1e-9
    z = np.hstack([(x - mean) / scale, np.ones((len(x), 1))])
    w = np.zeros(z.shape[1])
    penalty = np.eye(len(w)) * l2
    penalty[-1, -1] = 0.0
    for _ in range(50):
        p = 1 / (1 + np.exp(-z @ w))
        gradient = z.T @ (p - y) + penalty @ w
        hessian = (z * (p * (1 - p))[:, None]).T @ z + penalty
        w -= np.linalg.solve(hessian, gradient)
    return mean, scale, w


def fused(signals: dict, names: list[str], model: tuple) -> float:
    mean, scale, w = model
    z = (fusion_features(signals, names) - mean) / scale
    return float(1 / (1 + np.exp(-(z @ w[:-1] + w[-1]))))


def auroc(positive, negative) -> float:
    """P(a positive scores above a negative), ties counted half."""
    pos, neg = np.asarray(positive, float)[:, None], np.asarray(negative, float)[None, :]
    return float((pos > neg).mean() + 0.5 * (pos == neg).mean())


def bootstrap(values: np.ndarray, statistic=np.mean, n: int = 1000, seed: int = 0) -> tuple[float, float]:
    """95 % bootstrap interval of ``statistic`` over scenes (rows of ``values``)."""
    rng = np.random.default_rng(seed)
    values = np.asarray(values)
    stats = [statistic(values[rng.integers(len(values), size=len(values))]) for _ in range(n)]
    return float(np.percentile(stats, 2.5)), float(np.percentile(stats, 97.5))


def study(segmenter, scenes: list, world, seed: int = 0, keep: Optional[list] = None, decoys: str = "world"
          ) -> dict:
    """Capture every scene, then score every prior variant and collect the confidence signals."""
    from napari_editseg.eval.metrics import score_sample

    rng = np.random.default_rng(seed)
    others = world.with_other_expressions(scenes)
    absents = world.with_absent_expressions(scenes, seed)
    rows: dict = {name: {"own": [], "other": [], "iou": [], "peak": []} for name in VARIANTS}
    present_signals, absent_signals = [], []
    for i, scene in enumerate(scenes):
        chosen = (decoys_for(scene, world, rng) if decoys == "world" else
                  vocabulary_decoys(segmenter.model.tokenizer, scene.expression, rng))
        c = capture(segmenter, scene, others[i].expression, absents[i].expression, chosen)
        if keep is not None:
            keep.append(c)
        for name, variant in VARIANTS.items():
            own, other = variant(c, 0), variant(c, 1)
            own_image = to_image_size(own, scene.mask.shape)
            rows[name]["own"].append(prior_choice(own_image, scene.masks) == scene.index)
            rows[name]["peak"].append(bool(scene.mask.flat[int(np.argmax(own_image))]))
            rows[name]["other"].append(prior_choice(to_image_size(other, scene.mask.shape), scene.masks)
                                       == scene.index)
            scored = score_sample(str(i), mask_of(segmenter, c.base, own), scene.mask)
            rows[name]["iou"].append(100.0 * scored.intersection / max(scored.union, 1))
        present_signals.append({**confidence_signals(c, 0), **segmentation_signals(c.base)})
        absent_signals.append({**confidence_signals(c, 2), **segmentation_signals(c.absent_base)})
    return {"variants": {name: {k: np.asarray(v, float) for k, v in r.items()} for name, r in rows.items()},
            "present": present_signals, "absent": absent_signals}
