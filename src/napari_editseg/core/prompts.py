"""Where the user points instead of (or besides) words: a box, and clicked points.

A box is ``(row0, col0, row1, col1)`` in pixels of the original image, half-open like
numpy slicing: pixel ``(r, c)`` is inside when ``row0 <= r < row1`` and ``col0 <= c < col1``.
On the work grid a cell is inside when its rows and columns overlap the box, cells being
indexed as :func:`~napari_editseg.core.discriminate.to_grid` indexes clicked pixels.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .discriminate import Point, features_at, prototypes, to_grid
from .image import normalise01
from .instruction import Instruction

Box = tuple[int, int, int, int]

# The instruction of a run with no words: the empty text, which is what InstructPix2Pix
# was trained to see when the text is dropped (the null condition of classifier-free
# guidance), so the captured features describe the image and not an edit. Position 0
# (the start token) stands in for expression tokens so the forward's bookkeeping runs
# unchanged; the prior it yields is replaced by the points' own prior.
NEUTRAL_INSTRUCTION = Instruction(expression="", text="", token_positions=(0,), truncated=False)


def check_box(box: Sequence[float], image_shape: tuple[int, int]) -> Box:
    """The box as whole pixels clipped to the image; a ValueError if nothing of it is left."""
    if len(box) != 4:
        raise ValueError(f"box {tuple(box)} is not (row0, col0, row1, col1)")
    r0, c0, r1, c1 = (float(v) for v in box)
    height, width = image_shape
    clipped = (max(0, math.floor(r0)), max(0, math.floor(c0)), min(height, math.ceil(r1)), min(width, math.ceil(c1)))
    if not (clipped[2] > clipped[0] and clipped[3] > clipped[1]):
        raise ValueError(f"box {tuple(box)} holds no pixel of the image of shape {tuple(image_shape)}")
    return clipped


def box_cells(box: Box, image_shape: tuple[int, int], grid: tuple[int, int]) -> tuple[slice, slice]:
    """Rows and columns of the work grid that the box overlaps."""
    (r0, c0), (r1, c1) = to_grid([(box[0], box[1]), (box[2] - 1, box[3] - 1)], image_shape, grid)
    return slice(r0, r1 + 1), slice(c0, c1 + 1)


def box_mask(box: Box, shape: tuple[int, int], image_shape: Optional[tuple[int, int]] = None) -> np.ndarray:
    """bool map of the box on the image (``shape`` = image shape) or on a work grid of ``shape``."""
    inside = np.zeros(shape, bool)
    rows, cols = box_cells(box, image_shape, shape) if image_shape is not None else (
        slice(box[0], box[2]), slice(box[1], box[3]))
    inside[rows, cols] = True
    return inside


def confine_prior(prior_work: torch.Tensor, box: Optional[Box], image_shape: tuple[int, int]) -> torch.Tensor:
    """The work-grid prior with everything outside the box set to zero."""
    if box is None:
        return prior_work
    inside = torch.from_numpy(box_mask(box, tuple(prior_work.shape), image_shape)).to(prior_work)
    return prior_work * inside


def box_prototypes(
    features: torch.Tensor, prior_work: torch.Tensor, box: Optional[Box], image_shape: tuple[int, int], settings
) -> tuple[torch.Tensor, torch.Tensor]:
    """Prototypes as :func:`prototypes` picks them, the foreground one from inside the box only.

    Zero prior outside a small box would otherwise pull the foreground quantile to zero
    and make the foreground prototype the mean of the whole image.
    """
    args = (settings.fg_quantile, settings.bg_quantile, settings.bg_prototypes, settings.seed, settings.fg_select,
            settings.instances)
    fg, bg = prototypes(features, prior_work, *args)
    if box is not None:
        rows, cols = box_cells(box, image_shape, tuple(prior_work.shape))
        fg, _ = prototypes(features[:, rows, cols], prior_work[rows, cols], *args[:2], 1, *args[3:])
    return fg, bg


def points_prior(
    features: torch.Tensor, positive: Sequence[Point], box: Optional[Box], image_shape: tuple[int, int]
) -> torch.Tensor:
    """A prior from clicks instead of words: how much each cell looks like a positive point.

    The highest cosine similarity to the positive points' features, scaled to [0, 1];
    with no positive point, the box itself (1 inside). Zero outside the box.
    """
    grid = tuple(features.shape[1:])
    clicked = features_at(features, to_grid(positive, image_shape, grid))
    if len(clicked):
        similarity = (F.normalize(clicked, dim=1) @ features.reshape(features.shape[0], -1)).max(dim=0).values
        prior = normalise01(similarity.reshape(grid))
    else:
        prior = torch.ones(grid, dtype=features.dtype)
    return confine_prior(prior, box, image_shape)


def exemplar_prior(features: torch.Tensor, labels: np.ndarray, ids: Sequence[int]) -> torch.Tensor:
    """A prior from labelled objects instead of words: how much each cell looks like the most similar
    exemplar, scaled to [0, 1]. ``labels``: H×W integer label image; ``ids``: the exemplars' labels.
    Each exemplar's prototype is its cells' mean feature, weighted by how much of each cell it covers;
    similarities are cosines of the features less their mean over the image (a denoiser's features
    share a large common part that makes every cell look alike)."""
    from .image import resize

    grid = tuple(features.shape[1:])
    flat = features.reshape(features.shape[0], -1)
    flat = F.normalize(flat - flat.mean(dim=1, keepdim=True), dim=0)  # what all cells share says nothing
    found = []
    for i in ids:
        cover = resize(torch.from_numpy((labels == i).astype(np.float32)), grid).clamp(min=0).reshape(-1)
        found.append(F.normalize(flat @ cover / cover.sum().clamp(min=1e-12), dim=0))
    similarity = (torch.stack(found) @ flat).max(dim=0).values
    return normalise01(similarity.reshape(grid))


def exemplar_cue_prior(features: torch.Tensor, rgb: np.ndarray, labels: np.ndarray, ids: Sequence[int],
                       cue: str) -> torch.Tensor:
    """:func:`exemplar_prior` on what ``cue`` names: the model's features, the picture's colour
    (H×W×3 in [0, 1], averaged onto the features' grid; mean-centred like the features, so it
    says which colour, or for a grey picture brighter or darker than the rest), or both (geometric
    mean: high only where the two agree)."""
    from .image import resize

    grid = tuple(features.shape[1:])
    priors = []
    if cue in ("features", "both"):
        priors.append(exemplar_prior(features, labels, ids))
    if cue in ("colour", "both"):
        colour = resize(torch.from_numpy(np.ascontiguousarray(rgb, np.float32)).permute(2, 0, 1)[None], grid)[0]
        priors.append(exemplar_prior(colour, labels, ids))
    if not priors:
        raise ValueError(f"exemplar_cue must be features, colour or both; got {cue!r}")
    return normalise01(torch.stack(priors).prod(dim=0) ** (1.0 / len(priors)))
