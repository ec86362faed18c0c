"""Method step 5: where to look — a cross-attention prior made coherent by self-attention."""

from __future__ import annotations

from typing import Sequence

import torch

from .image import normalise01, resize


def expression_attention(
    cross_maps: Sequence[torch.Tensor],
    grids: Sequence[tuple[int, int]],
    token_positions: Sequence[int],
    token_reduce: str,
    work_grid: tuple[int, int],
) -> torch.Tensor:
    """P0: attention to the expression's own tokens, averaged over layers, on the work grid.

    ``cross_maps[i]`` is N×T (one image, head-averaged) on ``grids[i]`` (h×w = N).
    """
    if not token_positions:
        raise ValueError("no expression tokens to attend to")
    columns = list(token_positions)
    layers = []
    for probs, grid in zip(cross_maps, grids):
        per_token = probs[:, columns]
        reduced = per_token.mean(dim=1) if token_reduce == "mean" else per_token.max(dim=1).values
        layers.append(resize(normalise01(reduced.reshape(grid)), work_grid))
    return torch.stack(layers).mean(dim=0)


def propagate(
    prior: torch.Tensor, affinity: torch.Tensor, affinity_grid: tuple[int, int], steps: int
) -> torch.Tensor:
    """P = A^k · P0 on the affinity grid, back on the prior's grid, scaled to [0, 1].

    Each step replaces a position's value by the attention-weighted mean of the
    positions it attends to, so the prior spreads over what the model sees as one
    region and isolated peaks fade.
    """
    if steps == 0:
        return normalise01(prior)
    work_grid = tuple(prior.shape)
    p = resize(prior, affinity_grid).reshape(-1, 1)
    for _ in range(steps):
        p = affinity @ p
    return normalise01(resize(p.reshape(affinity_grid), work_grid))


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
    """The spatial prior P in [0, 1] on the work grid."""
    p0 = expression_attention(cross_maps, grids, token_positions, token_reduce, work_grid)
    return propagate(p0, affinity, affinity_grid, propagation_steps)
