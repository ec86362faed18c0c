"""Method step 5: where to look — a prior made coherent by self-attention.

The paper's prior is cross-attention to the expression's tokens (:func:`expression_attention`).
Its alternative is the instruction's *relevance*: how much the text changes what the denoiser
computes at each position (:mod:`napari_editseg.core.relevance`). :data:`PRIOR_SOURCES` says, for
each value of the ``prior_source`` setting, which of the two it reads and how they make one map;
everything that depends on the source (whether the forward runs the baseline-text row, which maps
step 5 computes) is read from that table. :func:`propagate` makes the map spatially coherent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from .image import normalise01, resize


def token_maps(
    probs: torch.Tensor,
    token_positions: Sequence[int],
    word_positions: Sequence[int] = (),
    token_norm: str = "none",
    token_scale: float = 100.0,
) -> torch.Tensor:
    """N×k attention of each image position to the k expression tokens.

    ``none`` reads the captured probabilities as they are (the paper's). The start token
    takes most of each row's mass and padding takes more, so ``softmax`` drops everything
    but the instruction's word tokens, scales and re-softmaxes over them (Attend-and-Excite,
    DAAM); ``contrast`` is handled by :func:`expression_attention` (it needs the reduction).
    """
    if token_norm != "softmax":
        return probs[:, list(token_positions)]
    words = list(word_positions)
    if not set(token_positions) <= set(words):
        raise ValueError("the expression tokens must be among the instruction's word tokens")
    renormed = (probs[:, words].float() * token_scale).softmax(dim=-1)
    return renormed[:, [words.index(p) for p in token_positions]]


def expression_attention(
    cross_maps: Sequence[torch.Tensor],
    grids: Sequence[tuple[int, int]],
    token_positions: Sequence[int],
    token_reduce: str,
    work_grid: tuple[int, int],
    word_positions: Sequence[int] = (),
    token_norm: str = "none",
    token_scale: float = 100.0,
) -> torch.Tensor:
    """P0: attention to the expression's own tokens, averaged over layers, on the work grid.

    ``cross_maps[i]`` is N×T (one image, head-averaged) on ``grids[i]`` (h×w = N).
    ``token_norm="contrast"`` subtracts the template words' map (each min-max scaled) from
    the expression's: what every word of the instruction attends to is where the *edit* goes,
    not where the expression points (ZONE's "edit-aware, not token-aware").
    """
    if not token_positions:
        raise ValueError("no expression tokens to attend to")
    template = [p for p in word_positions if p not in token_positions]
    if token_norm == "contrast" and not template:
        raise ValueError("token_norm='contrast' needs template words around '{}' in instruction_template")

    def reduce(columns: torch.Tensor) -> torch.Tensor:
        return columns.mean(dim=1) if token_reduce == "mean" else columns.max(dim=1).values

    layers = []
    for probs, grid in zip(cross_maps, grids):
        reduced = normalise01(reduce(token_maps(probs, token_positions, word_positions, token_norm, token_scale)))
        if token_norm == "contrast":
            reduced = normalise01((reduced - normalise01(probs[:, template].mean(dim=1))).clamp(min=0.0))
        layers.append(resize(reduced.reshape(grid), work_grid))
    return torch.stack(layers).mean(dim=0)


RESTART_TOLERANCE = 1e-6  # the random walk with restart stops when no value moves more than this
RESTART_MAX_STEPS = 500


def propagate(
    prior: torch.Tensor, affinity: torch.Tensor, affinity_grid: tuple[int, int], steps: int, restart: float = 0.0,
    smooth_steps: int = 0, restart_share: float = 1.0,
) -> torch.Tensor:
    """P = A^k · P0 on the affinity grid, back on the prior's grid, scaled to [0, 1].

    Each step replaces a position's value by the attention-weighted mean of the
    positions it attends to, so the prior spreads over what the model sees as one
    region and isolated peaks fade. On some models a few steps carry a good P0 off the object;
    ``restart`` > 0 instead iterates P ← (1−restart)·A·P + restart·P0 to its fixed point
    (personalised PageRank), which stays tied to where P0 is ((1-restart)^n shrinks each step, so
    it converges; ``steps`` only has to be above 0). The fixed point keeps a share ``restart`` of
    the raw P0, noise included; ``smooth_steps`` plain steps after it (A^s times it) drop that share.
    ``restart_share`` < 1 restarts at P0's highest cells only (that share of the work grid's cells, the
    rest set to zero): P0's weaker places elsewhere, a distractor's, then pull the walk nowhere.
    """
    if steps == 0:
        return normalise01(prior)
    work_grid = tuple(prior.shape)
    if restart > 0 and restart_share < 1:
        prior = prior * (prior >= torch.quantile(prior.flatten().float(), 1 - restart_share).to(prior))
    start = resize(prior, affinity_grid).reshape(-1, 1)
    p = start
    if restart == 0:
        for _ in range(steps):
            p = affinity @ p
    else:
        for _ in range(RESTART_MAX_STEPS):
            p, previous = (1 - restart) * (affinity @ p) + restart * start, p
            if float((p - previous).abs().max()) <= RESTART_TOLERANCE * max(float(start.max()), 1e-12):
                break
        for _ in range(smooth_steps):
            p = affinity @ p
    return normalise01(resize(p.reshape(affinity_grid), work_grid))


def cut_links(affinity: torch.Tensor, features: torch.Tensor, affinity_grid: tuple[int, int], share: float
              ) -> torch.Tensor:
    """The affinity with each row kept only at the ``share`` of the cells whose ``features`` (C×h×w, any
    grid) are most alike to its own in cosine, renormalised: a walk over it stays among alike cells (AnchorDiff's
    remedy, links between different objects cut)."""
    unit = torch.nn.functional.normalize(resize(features.float(), affinity_grid).flatten(1).T, dim=1)
    kept = max(1, round(share * unit.shape[0]))
    keep = torch.zeros_like(affinity).scatter_(1, (unit @ unit.T).topk(kept, dim=1).indices, 1.0)
    cut = affinity * keep
    return cut / cut.sum(dim=1, keepdim=True).clamp(min=1e-12)


def geometric_mean(attention: torch.Tensor, relevance: torch.Tensor) -> torch.Tensor:
    """High only where the words are attended to AND the instruction changes the denoiser's output."""
    return normalise01((normalise01(attention) * normalise01(relevance)).sqrt())


@dataclass(frozen=True)
class PriorSource:
    """One way to make P0: which captured maps it reads, and how they make one map on the work grid."""

    attention: bool  # the expression tokens' image→text attention (:func:`expression_attention`)
    relevance: bool  # the instruction's effect against the baseline text's row, which the forward adds
    combine: Callable[[Optional[torch.Tensor], Optional[torch.Tensor]], torch.Tensor]  # (attention, relevance) → P0


# the ``prior_source`` setting's values (its help in core/settings.py says what each means)
PRIOR_SOURCES: dict[str, PriorSource] = {
    "attention": PriorSource(attention=True, relevance=False, combine=lambda attention, _: attention),
    "relevance": PriorSource(attention=False, relevance=True, combine=lambda _, relevance: relevance),
    "fused": PriorSource(attention=True, relevance=True, combine=geometric_mean),
}


def combine_sources(attention: Optional[torch.Tensor], relevance: Optional[torch.Tensor], source: str
                    ) -> torch.Tensor:
    """P0 of ``prior_source`` from the maps it reads (see :data:`PRIOR_SOURCES`)."""
    return PRIOR_SOURCES[source].combine(attention, relevance)


def peak_dominance(p0: torch.Tensor) -> float:
    """Confidence that the prior points at ONE thing, in [0, 1]: 1 − (height of the second
    highest region / height of the highest), regions being the connected parts of P0 above
    Otsu's threshold. Near 0 when two places compete for the expression (an ambiguous or an
    absent object), 1 when a single region stands out."""
    from scipy.ndimage import maximum
    from skimage.filters import threshold_otsu
    from skimage.measure import label

    p = p0.detach().cpu().numpy().astype(np.float64)
    if p.max() <= 0 or p.max() == p.min():
        return 0.0
    parts = label(p > threshold_otsu(p), connectivity=2)
    heights = sorted(maximum(p, parts, index=np.arange(1, parts.max() + 1)), reverse=True)
    return 1.0 if len(heights) < 2 else float(np.clip(1.0 - heights[1] / heights[0], 0.0, 1.0))


def attention_prior(
    cross_maps: Sequence[torch.Tensor],
    grids: Sequence[tuple[int, int]],
    token_positions: Sequence[int],
    affinity: torch.Tensor,
    affinity_grid: tuple[int, int],
    work_grid: tuple[int, int],
    token_reduce: str = "mean",
    propagation_steps: int = 2,
) -> torch.Tensor:
    """The paper's spatial prior P in [0, 1] on the work grid (attention, as captured)."""
    p0 = expression_attention(cross_maps, grids, token_positions, token_reduce, work_grid)
    return propagate(p0, affinity, affinity_grid, propagation_steps)
