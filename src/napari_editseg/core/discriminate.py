"""Method step 6: what belongs together — prototypes in UNet feature space, cosine scores.

Also the interactive refinement: clicked pixels' features join the foreground or
background prototype sets, and each pixel is scored against the closest of each set.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from scipy.cluster.vq import kmeans

from .image import resize

Point = tuple[float, float]


def pixel_features(blocks: Sequence[torch.Tensor], work_grid: tuple[int, int]) -> torch.Tensor:
    """F: D×h×w; each block (C×h'×w') resized to the work grid, unit-normalised per pixel,
    concatenated and normalised again, so each block weighs the same whatever its width."""
    parts = [F.normalize(resize(block[None].float(), work_grid)[0], dim=0) for block in blocks]
    return F.normalize(torch.cat(parts, dim=0), dim=0)


def prototypes(
    features: torch.Tensor,
    prior: torch.Tensor,
    fg_quantile: float,
    bg_quantile: float,
    bg_prototypes: int = 1,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Foreground (1×D) and background (K×D) prototypes picked by the prior's quantiles."""
    flat = features.reshape(features.shape[0], -1).T  # N×D
    p = prior.reshape(-1).float()
    fg = flat[p >= torch.quantile(p, fg_quantile)].mean(dim=0, keepdim=True)
    background = flat[p <= torch.quantile(p, bg_quantile)]
    if bg_prototypes == 1 or len(background) <= bg_prototypes:
        return fg, background.mean(dim=0, keepdim=True)
    # k-means with restarts (scipy keeps the lowest distortion); empty clusters are dropped
    centroids, _ = kmeans(background.double().numpy(), bg_prototypes, iter=10, seed=seed)
    return fg, torch.from_numpy(centroids).to(features.dtype)


def to_grid(points: Sequence[Point], image_shape: tuple[int, int], grid: tuple[int, int]) -> list[tuple[int, int]]:
    """(row, col) pixel positions of the original image → cells of the work grid."""
    cells = []
    for row, col in points:
        if not (0 <= row < image_shape[0] and 0 <= col < image_shape[1]):
            raise ValueError(f"point ({row}, {col}) lies outside the image of shape {tuple(image_shape)}")
        cells.append((int(row * grid[0] / image_shape[0]), int(col * grid[1] / image_shape[1])))
    return cells


def features_at(features: torch.Tensor, cells: Sequence[tuple[int, int]]) -> torch.Tensor:
    """K×D feature vectors of work-grid cells."""
    if not cells:
        return features.new_zeros((0, features.shape[0]))
    rows, cols = zip(*cells)
    return features[:, list(rows), list(cols)].T


def score(features: torch.Tensor, fg: torch.Tensor, bg: torch.Tensor, temperature: float) -> torch.Tensor:
    """S = sigmoid(T · (max_i cos(F, fg_i) − max_j cos(F, bg_j))) on the work grid."""
    flat = features.reshape(features.shape[0], -1)  # D×N, unit columns
    s_fg = (F.normalize(fg, dim=1) @ flat).max(dim=0).values
    s_bg = (F.normalize(bg, dim=1) @ flat).max(dim=0).values
    return torch.sigmoid(temperature * (s_fg - s_bg)).reshape(features.shape[1:])
