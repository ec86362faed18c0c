"""Method step 7: from the work-grid score map to a mask at the image's own size."""

from __future__ import annotations

import numpy as np
import torch
from scipy.ndimage import binary_fill_holes
from skimage.measure import label

from .image import resize


def to_image_size(work_map: torch.Tensor, image_shape: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a work-grid map to H×W, as float32 numpy clipped to [0, 1]."""
    return resize(work_map, tuple(image_shape)).clamp(0.0, 1.0).cpu().numpy().astype(np.float32)


def make_mask(
    scores: np.ndarray, prior: np.ndarray, threshold: float, keep: str = "all", fill_holes: bool = False
) -> np.ndarray:
    """``scores >= threshold``; ``keep="peak"`` keeps only the connected parts at the prior's maximum."""
    mask = scores >= threshold
    if keep == "peak" and mask.any():
        parts = label(mask, connectivity=2)
        peak_part = parts[np.unravel_index(np.argmax(prior), prior.shape)]
        if peak_part == 0:
            # the prior's maximum is outside the mask: keep the part the prior likes most
            best = np.zeros(parts.max() + 1)
            np.maximum.at(best, parts.ravel(), prior.ravel())
            best[0] = -1.0
            peak_part = int(np.argmax(best))
        mask = parts == peak_part
    if fill_holes:
        mask = binary_fill_holes(mask)
    return mask
