"""What makes an object like the exemplars a user painted: its colour, how much it stands out from
its surroundings, and its form.

A region's attributes (:func:`attributes`): mean R, G, B in [0, 1]; its *contrast*, the distance
between its mean colour and that of a two-pixel ring around it; its *form*, the circularity 4πA/P²
of its outline smoothed at one pixel, the normalised second moment (mu20 + mu02)/A² and a
third-order asymmetry (from Hu's 3rd and 4th invariants: about 0 for discs and squares, 6 for
triangles). Form is measured with integrals over the area and a smoothed outline because a found
mask is seldom clean: a ragged edge took the pixel perimeter's circularity of a disc from 1.0 to 0.6.

What the exemplars share must match; what they differ in may vary (:func:`exemplar_bounds`): three
red objects ask for red, three squares of three colours for squares of any colour. Whatever else, a
like object stands out from its surroundings at least half as much as the least contrasted exemplar
(a stretch of background does not). The tolerances were set on the shapes world's tuning scenes
(docs/shapes-world.md); the size rule is ``exemplar_size``'s, applied in stages.delineate.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage

from .instances import renumbered

COLOUR, CONTRAST, FORM = slice(0, 3), 3, slice(4, 7)
# how far outside the exemplars' range each attribute may lie (contrast: see exemplar_bounds)
TOLERANCE = np.array([0.18, 0.18, 0.18, np.nan, 0.07, 0.015, 2.5])
RING = 2  # pixels around a region that are its surroundings


def _outline_circularity(mask: np.ndarray) -> float:
    """4πA/P² of the half-level outline of the mask blurred by one pixel."""
    from skimage.measure import find_contours

    outlines = find_contours(ndimage.gaussian_filter(np.pad(mask.astype(float), 3), 1.0), 0.5)
    if not outlines:
        return 0.0
    rows, cols = max(outlines, key=len).T
    area = 0.5 * abs(np.dot(rows, np.roll(cols, 1)) - np.dot(cols, np.roll(rows, 1)))
    length = np.hypot(np.diff(rows), np.diff(cols)).sum()
    return float(4 * np.pi * area / max(length, 1e-6) ** 2)


def _form(mask: np.ndarray) -> list[float]:
    """Circularity, normalised second moment and asymmetry of the mask's largest part, holes filled."""
    from skimage.measure import moments_central

    parts, count = ndimage.label(mask)
    if count > 1:
        mask = parts == np.bincount(parts.ravel())[1:].argmax() + 1
    mask = ndimage.binary_fill_holes(mask)
    area = float(mask.sum())
    mu = moments_central(mask.astype(float), order=3)

    def eta(p: int, q: int) -> float:
        return mu[p, q] / area ** (1 + (p + q) / 2)

    hu3 = (eta(3, 0) - 3 * eta(1, 2)) ** 2 + (3 * eta(2, 1) - eta(0, 3)) ** 2
    hu4 = (eta(3, 0) + eta(1, 2)) ** 2 + (eta(2, 1) + eta(0, 3)) ** 2
    return [_outline_circularity(mask), eta(2, 0) + eta(0, 2), 100 * float(np.sqrt(hu3 + hu4))]


def attributes(labels: np.ndarray, rgb: np.ndarray, form: bool = True) -> dict[int, np.ndarray]:
    """Per region of ``labels`` (int, ids ≥ 1; ``rgb`` H×W×3 in [0, 1]): colour, contrast and, with
    ``form``, the form (NaN without: the cheap attributes alone)."""
    out = {}
    height, width = labels.shape
    for k, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        grown = (slice(max(box[0].start - RING, 0), min(box[0].stop + RING, height)),
                 slice(max(box[1].start - RING, 0), min(box[1].stop + RING, width)))
        region, colours = labels[grown] == k, rgb[grown]
        ring = ndimage.binary_dilation(region, iterations=RING) & ~region
        colour = colours[region].mean(axis=0)
        contrast = float(np.linalg.norm(colour - colours[ring].mean(axis=0))) if ring.any() else 0.0
        out[k] = np.array([*colour, contrast, *(_form(region) if form else [np.nan] * 3)])
    return out


def exemplar_bounds(of_labels: dict[int, np.ndarray], ids: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """(low, high) per attribute from the exemplars' (``of_labels``: :func:`attributes`): their range
    widened by the tolerance for each group (colour, form) on which they agree, every attribute of it
    spread less than its tolerance; a group on which they differ is free (−inf, inf): the span between
    red and blue says nothing against green. Contrast: at least half the exemplars' least."""
    exemplars = np.stack([of_labels[i] for i in ids])
    low, high = exemplars.min(axis=0) - TOLERANCE, exemplars.max(axis=0) + TOLERANCE
    spread = np.ptp(exemplars, axis=0)
    for group in (COLOUR, FORM):
        if np.any(spread[group] > TOLERANCE[group]):
            low[group], high[group] = -np.inf, np.inf
    low[CONTRAST], high[CONTRAST] = exemplars[:, CONTRAST].min() / 2, np.inf
    return low, high


def _within(values: np.ndarray, bounds: tuple[np.ndarray, np.ndarray], which: slice) -> bool:
    return bool(np.all((values[which] >= bounds[0][which]) & (values[which] <= bounds[1][which])))


def regions_alike(regions: np.ndarray, scores: tuple[float, ...], painted: np.ndarray, rgb: np.ndarray,
                  bounds: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, tuple[float, ...]]:
    """The ``regions`` (ids 1…k, with ``scores``) whose every attribute lies within ``bounds``.
    Regions lying mostly on ``painted`` pixels are dropped, the others lose them. Returns
    (labels 1…m, scores); their size is judged with the instances' (``exemplar_size``)."""
    sizes = np.bincount(regions.ravel(), minlength=len(scores) + 1)
    on_painted = np.bincount(regions[painted], minlength=len(scores) + 1)
    kept = [k - 1 for k, values in attributes(regions, rgb).items()
            if on_painted[k] * 2 <= sizes[k] and _within(values, bounds, slice(None))]
    out, kept_scores = renumbered(regions, scores, kept)
    out[painted] = 0
    return out, kept_scores


def coloured_alike(labels: np.ndarray, instance_scores: tuple[float, ...], rgb: np.ndarray,
                   bounds: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, tuple[float, ...]]:
    """Instances whose colour and contrast lie within ``bounds``; the others dropped, ids renumbered
    1…n, order kept. Only these two: the features find objects whose masks are often ragged, on
    which colour is measured well and form is not (the form check cost them recall)."""
    of_labels = attributes(labels, rgb, form=False)
    keep = [k - 1 for k, values in of_labels.items() if _within(values, bounds, slice(0, CONTRAST + 1))]
    return renumbered(labels, instance_scores, keep)
