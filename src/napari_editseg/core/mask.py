"""Method step 7: from the work-grid score map to a mask at the image's own size."""

from __future__ import annotations

import numpy as np
import torch
from scipy.ndimage import binary_fill_holes, distance_transform_edt
from skimage.measure import label

from .image import resize


def to_image_size(work_map: torch.Tensor, image_shape: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a work-grid map to H×W, as float32 numpy clipped to [0, 1]."""
    return resize(work_map, tuple(image_shape)).clamp(0.0, 1.0).cpu().numpy().astype(np.float32)


def score_contrast(scores: np.ndarray, mask: np.ndarray) -> float:
    """How far the mask's scores stand out from the rest's: mean inside minus mean outside (-1 when
    the mask is empty or everything)."""
    if not mask.any() or mask.all():
        return -1.0
    return float(scores[mask].mean() - scores[~mask].mean())


def make_mask(
    scores: np.ndarray, prior: np.ndarray, threshold: float, keep: str = "all", fill_holes: bool = False
) -> np.ndarray:
    """``scores >= threshold``; ``keep="peak"`` keeps only the connected part at the prior's
    maximum (or, when the maximum lies outside the mask, the part nearest to it)."""
    mask = scores >= threshold
    if keep == "peak" and mask.any():
        parts = label(mask, connectivity=2)
        peak = np.unravel_index(np.argmax(prior), prior.shape)
        if not mask[peak]:
            # the prior's maximum falls outside the mask: move it to the nearest mask pixel
            _, nearest = distance_transform_edt(~mask, return_indices=True)
            peak = tuple(index[peak] for index in nearest)
        peak_part = parts[peak]
        mask = parts == peak_part
    if fill_holes:
        mask = binary_fill_holes(mask)
    return mask
