"""Method step 6: what belongs together — prototypes in the denoiser's feature space, cosine scores.

Also the interactive refinement: clicked pixels' features join the foreground or
background prototype sets, and each pixel is scored against the closest of each set.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

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
    fg_select: str = "quantile",
    fg_parts: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Foreground (1×D) and background (K×D) prototypes picked by the prior; ``fg_parts``: one
    foreground prototype per connected part of the chosen cells (instance mode: each object the
    words name is its own sample, a red and a blue circle are not averaged into a purple one).

    ``fg_select="quantile"``: foreground where P ≥ its ``fg_quantile``, a fixed share of the
    grid whatever the object's size (and every cell when more than that share ties at the
    minimum). ``"otsu"``: where P lies above Otsu's threshold of P, a split the prior's own
    distribution sets; the background set then also stays below that threshold. ``"peak"``:
    only the connected part of that region holding the prior's maximum; the other parts
    above the threshold are rivals the expression did not pick, and join the background set.
    ``"both"`` (the default setting): above Otsu's threshold AND in the ``fg_quantile`` share —
    Otsu's split keeps a small object's cells apart from the rest, the quantile keeps a diffuse
    prior from handing half the grid to the foreground.
    """
    flat = features.reshape(features.shape[0], -1)  # D×N, contiguous: means as matrix products
    p = prior.reshape(-1).float()
    bg_limit = torch.quantile(p, bg_quantile)
    rivals = torch.zeros_like(p, dtype=torch.bool)
    if fg_select == "quantile":
        chosen = p >= torch.quantile(p, fg_quantile)
    else:  # otsu, peak, both: Otsu's split of the prior
        threshold = otsu_threshold(p)
        above = p > threshold
        if not above.any():  # a flat prior: nothing lies above the split
            chosen = p >= p.max()
        elif fg_select == "both":
            chosen = p >= max(threshold, float(torch.quantile(p, fg_quantile)))
            if not (chosen & above).any():
                chosen = above
        else:
            chosen = above
        if fg_select == "peak":
            peak = torch.from_numpy(peak_region(chosen.reshape(prior.shape).numpy(), prior.numpy())).reshape(-1)
            chosen, rivals = peak, chosen & ~peak
        bg_limit = torch.minimum(bg_limit, torch.as_tensor(threshold, dtype=p.dtype))
    if fg_parts:
        fg = part_means(flat, chosen.reshape(prior.shape))
    else:
        fg = (flat @ chosen.to(flat.dtype) / chosen.sum())[None]
    in_background = (p <= bg_limit) | rivals
    if bg_prototypes == 1 or int(in_background.sum()) <= bg_prototypes:
        return fg, (flat @ in_background.to(flat.dtype) / in_background.sum())[None]
    return fg, kmeans_means(flat[:, in_background], bg_prototypes, seed)


def part_means(flat: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
    """k×D mean features of the k connected parts (8-connected) of the chosen cells (h×w bool)."""
    from scipy import ndimage

    parts, count = ndimage.label(chosen.numpy(), structure=np.ones((3, 3), bool))
    one_hot = torch.nn.functional.one_hot(torch.from_numpy(parts.reshape(-1)).long(), count + 1)[:, 1:]
    one_hot = one_hot.to(flat.dtype)
    return (flat @ one_hot / one_hot.sum(dim=0).clamp(min=1)).T


CLUSTER_DIMS = 32  # k-means runs on this many principal components: refine stays fast at denoiser widths
PCA_SAMPLE = 512  # columns the principal components are estimated from


def kmeans_means(columns: torch.Tensor, k: int, seed: int = 0) -> torch.Tensor:
    """k×D means (in the features' own space) of the k-means clusters of the columns (D×N).

    scipy's k-means (10 restarts from random points, lowest distortion kept) runs on the
    columns' ``CLUSTER_DIMS`` principal components (a seeded randomised SVD of up to
    ``PCA_SAMPLE`` of them): the directions
    that separate background modes are the ones of most variance, and refine stays fast at
    denoiser widths. Empty clusters are dropped.
    """
    from scipy.cluster.vq import kmeans, vq

    columns = columns.float()
    points = columns.T - columns.mean(dim=1)
    if columns.shape[0] > CLUSTER_DIMS:
        with torch.random.fork_rng(devices=[]):  # svd_lowrank draws from the global generator: leave it as it was
            torch.manual_seed(seed)
            sample = points[torch.randperm(len(points))[:PCA_SAMPLE]]  # the components of a sample suffice
            _, _, v = torch.svd_lowrank(sample, q=min(CLUSTER_DIMS, len(sample)), niter=2, M=None)
        points = points @ v
    points = points.double().numpy()
    codebook, _ = kmeans(points, k, iter=10, seed=seed)
    assign = torch.from_numpy(vq(points, codebook)[0]).long()
    counts = torch.bincount(assign, minlength=len(codebook))
    one_hot = torch.nn.functional.one_hot(assign, len(codebook)).to(columns.dtype)  # N×k
    means = (columns @ one_hot / counts.clamp(min=1)).T
    return means[counts > 0]


def peak_region(mask: np.ndarray, prior: np.ndarray) -> np.ndarray:
    """The connected part of ``mask`` that holds the prior's maximum (8-connected)."""
    from skimage.measure import label

    parts = label(mask, connectivity=2)
    return parts == parts[np.unravel_index(np.argmax(np.where(mask, prior, -np.inf)), prior.shape)]


def otsu_threshold(values: torch.Tensor) -> float:
    """Otsu's threshold of a prior's values (scikit-image); a constant prior gives its value."""
    from skimage.filters import threshold_otsu

    v = values.detach().cpu().numpy().astype(np.float64)
    return float(v.max()) if v.min() == v.max() else float(threshold_otsu(v))


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
