"""Every object an expression names, one label each: the mask split into instances.

A mask from step 7 covers every object the words name; a biologist typing "nuclei" wants one label
per nucleus, counted. :func:`split_instances` separates the mask's connected parts and, inside a
part, objects that touch: a watershed on the *landscape* ``distance to the mask's edge × score``,
seeded by the landscape's h-maxima. Two touching discs make two peaks with a saddle at their
neck; a score that dips where they meet deepens the saddle. A peak is a seed of its own only when
it stands more than ``split_depth`` × the part's highest peak above the saddles around it, so
a ragged edge does not cut one object in pieces.

Each instance gets its own score: the mean foreground probability S inside it times how much the
prior looked there (its maximum inside, over the prior's maximum), so that an object the words
pointed at ranks above one the features alone admitted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import ndimage


@dataclass(frozen=True)
class Instance:
    """One object of an instance label image: its id there, area (pixels), centroid ((row, col)
    pixels) and score in [0, 1]."""

    id: int
    area: int
    centroid: tuple[float, float]
    score: float


def split_instances(mask: np.ndarray, scores: np.ndarray, prior: np.ndarray, split: str = "watershed",
                    split_depth: float = 0.25, min_size: int = 20, min_score: float = 0.0
                    ) -> tuple[np.ndarray, tuple[float, ...]]:
    """An instance label image (int32 H×W, 0 = none, ids 1…n) and one score per id.

    ``mask``: bool H×W; ``scores``: S, float H×W in [0, 1]; ``prior``: P at the same size.
    ``split``: ``"components"`` (each connected part is one object) or ``"watershed"`` (touching
    objects inside a part split as the module says); ``split_depth``: in [0, 1], how deep a saddle
    between two peaks must be, as a share of the part's highest peak, for them to be two objects;
    ``min_size``: objects of fewer pixels are dropped, and so are those scoring under ``min_score``.
    Ids run by decreasing score.
    """
    parts, count = ndimage.label(mask, structure=np.ones((3, 3), bool))
    labels = np.zeros(mask.shape, np.int32)
    next_id = 1
    for index, where in enumerate(ndimage.find_objects(parts), start=1):
        part = parts[where] == index
        if split == "watershed":
            # distances to the mask's edge from the part's box and one pixel around it: nothing further
            # away is nearer to a pixel of the part than the zeros around it
            grown = tuple(slice(max(b.start - 1, 0), min(b.stop + 1, n)) for b, n in zip(where, mask.shape))
            inner = tuple(slice(b.start - g.start, b.stop - g.start) for b, g in zip(where, grown))
            distance = ndimage.distance_transform_edt(mask[grown])[inner]
            pieces = _split_part(part, distance * np.clip(scores[where], 0.0, 1.0), split_depth)
        else:
            pieces = part.astype(np.int32)
        for piece in range(1, int(pieces.max()) + 1):
            labels[where][pieces == piece] = next_id
            next_id += 1
    return _ranked(labels, scores, prior, min_size, min_score)


def _split_part(part: np.ndarray, landscape: np.ndarray, split_depth: float) -> np.ndarray:
    """One connected part as pieces 1…k: watershed of the landscape from its h-maxima."""
    from skimage.morphology import local_maxima, reconstruction
    from skimage.segmentation import watershed

    height = float(landscape[part].max())
    if height <= 0 or part.sum() < 4:
        return part.astype(np.int32)
    inside = np.where(part, landscape, 0.0)
    # the h-maxima: peaks lowered by h and grown back under the landscape; what stays a regional
    # maximum rose more than h above every saddle (two equal peaks over a high saddle: one plateau)
    lowered = np.maximum(inside - max(split_depth * height, 1e-6), 0.0)
    grown = reconstruction(lowered, inside, method="dilation")
    seeds = local_maxima(grown, connectivity=2, allow_borders=True) & part & (grown > 0)
    markers, found = ndimage.label(seeds, structure=np.ones((3, 3), bool))
    if found <= 1:
        return part.astype(np.int32)
    return watershed(-inside, markers, mask=part).astype(np.int32)


def _ranked(labels: np.ndarray, scores: np.ndarray, prior: np.ndarray, min_size: int, min_score: float
            ) -> tuple[np.ndarray, tuple[float, ...]]:
    """Drop instances under ``min_size`` pixels or ``min_score``; the rest renumbered 1…n by decreasing score."""
    count = int(labels.max())
    if count == 0:
        return labels, ()
    ids = np.arange(1, count + 1)
    areas = ndimage.sum_labels(np.ones_like(scores), labels, ids)
    mean_s = ndimage.mean(scores, labels, ids)
    top = float(prior.max())
    inside = labels > 0
    highest = np.full(count + 1, -np.inf, prior.dtype)  # per id, the prior's maximum inside (faster than ndimage)
    np.maximum.at(highest, labels[inside], prior[inside])
    looked = highest[1:] / top if top > 0 else np.ones(count)
    values = np.asarray(mean_s) * np.asarray(looked)
    kept = [i for i in np.argsort(-values, kind="stable") if areas[i] >= min_size and values[i] >= min_score]
    return renumbered(labels, tuple(float(np.clip(v, 0.0, 1.0)) for v in values), kept)


def renumbered(labels: np.ndarray, scores: Sequence[float], kept: Sequence[int]
               ) -> tuple[np.ndarray, tuple[float, ...]]:
    """The instances ``kept`` (indices into ``scores``: id ``i + 1`` in ``labels``), in that order, as ids
    1…n with their scores; every other instance's pixels become 0."""
    lookup = np.zeros(len(scores) + 1, np.int32)
    lookup[np.asarray(kept, dtype=np.int64) + 1] = np.arange(1, len(kept) + 1)
    return lookup[labels], tuple(scores[i] for i in kept)


def by_score(labels: np.ndarray, scores: Sequence[float]) -> tuple[np.ndarray, tuple[float, ...]]:
    """The instances renumbered 1…n by decreasing score (ties keep their order)."""
    return renumbered(labels, scores, np.argsort(-np.asarray(scores, dtype=float), kind="stable"))


def describe(labels: np.ndarray, instance_scores: tuple[float, ...]) -> list[Instance]:
    """Id, area, centroid and score of each instance of a label image (ids 1…n, as
    :func:`split_instances` numbers them)."""
    ids = np.arange(1, len(instance_scores) + 1)
    if not len(ids):
        return []
    areas = ndimage.sum_labels(np.ones(labels.shape), labels, ids)
    centroids = ndimage.center_of_mass(np.ones(labels.shape), labels, ids)
    return [Instance(int(i), int(a), (float(c[0]), float(c[1])), float(s))
            for i, a, c, s in zip(ids, areas, centroids, instance_scores)]


def sized_like(labels: np.ndarray, instance_scores: tuple[float, ...], areas: tuple[int, ...], factor: float
               ) -> tuple[np.ndarray, tuple[float, ...]]:
    """Instances whose area lies within ``factor`` of the exemplars' ``areas`` (from the smallest /
    factor to the largest × factor); the others dropped, ids renumbered 1…n, order kept. Exemplars
    say how large "like this one" is: a background stretch or a fragment the features admitted is
    seldom the size of the objects the user painted. ``factor`` 0 (or no areas): all kept."""
    if not factor or not areas or not instance_scores:
        return labels, instance_scores
    low, high = min(areas) / factor, max(areas) * factor
    sizes = ndimage.sum_labels(np.ones(labels.shape), labels, np.arange(1, len(instance_scores) + 1))
    return renumbered(labels, instance_scores, [i for i, size in enumerate(sizes) if low <= size <= high])


def joined_where_free(labels: np.ndarray, instance_scores: tuple[float, ...], extra: np.ndarray,
                      extra_scores: tuple[float, ...]) -> tuple[np.ndarray, tuple[float, ...]]:
    """``labels`` with each region of ``extra`` (ids 1…k) added as an instance of its own where it lies
    mostly (more than half) on pixels no instance holds; only those free pixels. Ids renumbered 1…n
    by decreasing score."""
    count = len(extra_scores) + 1
    empty = labels == 0  # the regions of extra do not overlap: one joining leaves the others' free pixels free
    joins = np.bincount(extra[empty], minlength=count) * 2 > np.bincount(extra.ravel(), minlength=count)
    joins[0] = False
    ids = np.zeros(count, labels.dtype)
    ids[joins] = len(instance_scores) + np.arange(1, int(joins.sum()) + 1)
    out = labels.copy()
    out[empty] = ids[extra[empty]]
    return by_score(out, [*instance_scores, *(v for v, j in zip(extra_scores, joins[1:]) if j)])


def without_painted(labels: np.ndarray, instance_scores: tuple[float, ...], painted: np.ndarray, min_size: int
                    ) -> tuple[np.ndarray, tuple[float, ...]]:
    """Instances that leave every painted pixel as it was: one lying mostly (half or more) on painted
    pixels is an object the user has labelled already and is dropped; the others lose their painted
    pixels, then those under ``min_size`` pixels. Ids renumbered 1…n, order kept."""
    kept_ids, kept_scores = [], []
    out = np.zeros_like(labels)
    for i, value in enumerate(instance_scores, start=1):
        where = labels == i
        area = int(where.sum())
        free = where & ~painted
        if area == 0 or free.sum() * 2 <= area or free.sum() < min_size:
            continue
        kept_ids.append(i)
        kept_scores.append(value)
        out[free] = len(kept_ids)
    return out, tuple(kept_scores)
