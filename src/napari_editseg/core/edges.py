"""Method step 7, at the image's own resolution: make the score map follow the image's edges.

Scores are decided on the work grid (64×64 on InstructPix2Pix), so a mask upsampled from it
has staircase edges of one grid cell (8 px on a 512 px photo, 32 px on a 2048 px tile).
:class:`ImageGuide` refines the upsampled score map against the full-resolution image:

- ``guided``: a colour guided filter (He, Sun & Tang), in its fast form (coefficients on a
  coarse grid, applied at full resolution): inside each window the output is a linear function
  of the image's colour, so a score edge snaps to the colour edge nearby;

Also tried (docs/shapes-world.md has the numbers): a vote of the scores inside superpixels
(SLIC, Felzenszwalb) — better on a perfect prior, worse end to end, and Felzenszwalb takes
half a minute on a 2048 px tile; a dense CRF — no maintained package (pydensecrf's last
release is from 2018).

The guide is the image as the segmenter took it (float RGB in [0, 1], grey repeated, 16-bit
data through the same scaling), so grey, RGB and composites are handled alike.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .image import resize

EDGE_METHODS = ("none", "guided")


def box_mean(x: torch.Tensor, radius: int) -> torch.Tensor:
    """Mean over a (2r+1)² window of N×C×h×w maps, windows clipped at the border."""
    if radius <= 0:
        return x
    return F.avg_pool2d(x, 2 * radius + 1, stride=1, padding=radius, count_include_pad=False)


class ImageGuide:
    """One image's full-resolution guide; what depends only on the image is computed once.

    Shared by every segmentation of the image (``refine`` reuses it), so a re-threshold or a
    click pays only for the score-dependent part.
    """

    def __init__(self, rgb: np.ndarray):
        self.rgb = rgb  # H×W×3 float32 in [0, 1]; a reference, never copied
        self._cache: dict[Any, Any] = {}

    @property
    def shape(self) -> tuple[int, int]:
        return self.rgb.shape[:2]

    def refine(self, scores: np.ndarray, method: str, cell: float, radius: float, eps: float) -> np.ndarray:
        """H×W scores in [0, 1] made to follow the image's edges.

        ``cell``: pixels per work-grid cell; ``radius``: the filter window's radius, in cells;
        ``eps``: the guided filter's regularisation (larger: smoother, follows only stronger
        edges).
        """
        if method == "none":
            return scores
        if method == "guided":
            return self._guided(scores, max(1.0, radius * cell), eps)
        raise ValueError(f"edge_refine={method!r}: expected one of {', '.join(EDGE_METHODS)}")

    # -- guided filter --------------------------------------------------------------------
    def _coarse(self, radius_px: float, eps: float):
        """The image on the coarse grid and, per window there, mean colour and the inverse of
        (colour covariance + eps·I): everything of the filter that the scores do not change."""
        key = ("guided", round(radius_px, 3), eps)
        if key not in self._cache:
            h, w = self.shape
            step = max(1.0, radius_px / 2)  # two coarse cells per radius
            grid = (max(1, round(h / step)), max(1, round(w / step)))
            r = max(1, round(radius_px / step))
            image = resize(torch.from_numpy(self.rgb).permute(2, 0, 1)[None].float(), grid)  # 1×3×h×w
            mean_i = box_mean(image, r)
            products = (image[:, :, None] * image[:, None]).reshape(1, 9, *grid)
            cov = box_mean(products, r).reshape(1, 3, 3, *grid) - mean_i[:, :, None] * mean_i[:, None]
            cov = cov.permute(0, 3, 4, 1, 2) + eps * torch.eye(3)  # 1×h×w×3×3
            self._cache[key] = (grid, r, image, mean_i, torch.linalg.inv(cov))
        return self._cache[key]

    def _guided(self, scores: np.ndarray, radius_px: float, eps: float) -> np.ndarray:
        grid, r, image, mean_i, inverse = self._coarse(radius_px, eps)
        p = resize(torch.from_numpy(scores)[None, None].float(), grid)
        mean_p = box_mean(p, r)
        cov_ip = box_mean(image * p, r) - mean_i * mean_p  # 1×3×h×w
        a = torch.einsum("bhwij,bjhw->bihw", inverse, cov_ip)
        b = mean_p - (a * mean_i).sum(dim=1, keepdim=True)
        a, b = box_mean(a, r), box_mean(b, r)
        full = torch.from_numpy(self.rgb).permute(2, 0, 1)[None]
        q = (resize(a, self.shape) * full).sum(dim=1) + resize(b, self.shape)[:, 0]
        return q[0].clamp(0.0, 1.0).numpy().astype(np.float32)
