"""Runs that start from labels or from nothing: "more like this one", and segment everything.

:class:`PromptModes` holds :class:`~napari_editseg.core.segmenter.EditSegmenter`'s entry points
that need no words: :meth:`~PromptModes.segment_like` (existing labels as prompts: their
features become the foreground prototypes, the other objects like them come back as instances,
and no painted pixel is ever claimed) and :meth:`~PromptModes.segment_everything` (the image split
into regions by clusters of its features, then the same delineation and edge step, each region a
label). :meth:`~PromptModes.segment_label` segments one existing label again inside its box without
touching the others. :func:`everything` is segment-everything as a function over data.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Optional, Sequence

import numpy as np
import torch

from .alike import attributes, exemplar_bounds, regions_alike
from .discriminate import kmeans_means, pixel_features, score
from .edges import ImageGuide
from .forward import CapturedMaps
from .instances import by_score, joined_where_free, split_instances
from .mask import to_image_size
from .prompts import NEUTRAL_INSTRUCTION, check_box, exemplar_cue_prior
from .settings import SegmentationSettings
from .stages import Segmentation, segment_maps, work_grid_of


def check_exemplars(labels: Any, ids: Any, shape: tuple[int, int]) -> tuple[np.ndarray, tuple[int, ...]]:
    """The label image as an integer H×W array of the image's size and the exemplar ids, each
    present in it; anything else is refused with one line."""
    array = np.asarray(labels)
    if array.shape != tuple(shape) or not (np.issubdtype(array.dtype, np.integer) or array.dtype == bool):
        raise ValueError(f"labels must be an integer label image of the image's size {tuple(shape)}; got shape "
                         f"{array.shape} and dtype {array.dtype}")
    try:
        chosen = tuple(int(i) for i in ([ids] if np.isscalar(ids) else ids))
    except (TypeError, ValueError):
        raise ValueError(f"ids must be label ids (integers), e.g. ids=[3, 7]; got {ids!r}") from None
    missing = [i for i in chosen if i == 0 or not (array == i).any()]
    if not chosen or missing:
        raise ValueError(f"exemplar label(s) {missing or 'none given'} not painted in the labels: give ids of "
                         "painted objects")
    return array, chosen


def parse_label_ids(text: str) -> list[int]:
    """Label ids as typed ("3, 7" or "3,7"); one line saying what is expected otherwise."""
    try:
        ids = [int(part) for part in str(text).replace(" ", ",").split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"label ids {text!r}: give whole numbers, e.g. 3, 7") from None
    if not ids:
        raise ValueError("give the exemplars' label ids, e.g. 3, 7")
    return ids


class PromptModes:
    """Mixed into EditSegmenter: segment from exemplar labels, or everything. Each holds the model's
    lock for its whole run, as every call of the segmenter does."""

    def _wordless(self, expression: Optional[str], overrides: dict) -> tuple:
        """One forward of ``expression`` (the empty instruction when None: the image alone); its
        maps, resolved settings, work-grid features and timings. No relevance rows: the prior is ours."""
        settings = self.resolve_settings(**{**overrides, "prior_source": "attention"})
        forward = self._forward([expression or NEUTRAL_INSTRUCTION], settings, True, relevance=False)
        maps = forward.maps(0)
        features = pixel_features(maps.features, work_grid_of(maps.latent_grid, settings.work_resolution))
        return maps, settings, features, {**self._image_timings, **forward.timings}

    def segment_like(self, labels: Any, ids: Sequence[int], expression: Optional[str] = None,
                     **overrides: Any) -> Segmentation:
        """The other objects like the exemplars, as instances; ``labels``: H×W integer label image
        of the set image, ``ids``: the exemplars' labels in it; ``expression``: words that shape the
        features too (none: the image alone).

        The prior is how much each place looks like the most similar exemplar (by ``exemplar_cue``:
        the model's features, the picture's colour, or both); objects far from the exemplars' size are
        dropped (``exemplar_size``), and so are those of another colour where the exemplars share one
        (``exemplar_colour``); with ``exemplar_regions`` the image's regions alike to the exemplars in
        colour, form and size join them (:func:`regions_alike`), from segment everything's ``granularity``
        clusters and, where they leave room, ``exemplar_granularity``'s; every painted pixel
        (any label, not only the exemplars) is left out of the result, also after :meth:`refine`.
        """
        with self.model.lock:
            shape = self._require_image().shape[:2]
            labels, ids = check_exemplars(labels, ids, shape)
            maps, settings, features, timings = self._wordless(expression, {**overrides, "instances": True})
            rgb, painted = self._guide.rgb, labels != 0
            prior = exemplar_cue_prior(features, rgb, labels, ids, settings.exemplar_cue)
            areas = tuple(int((labels == i).sum()) for i in ids)
            bounds = exemplar_bounds(attributes(np.where(np.isin(labels, ids), labels, 0), rgb), ids)
            alike = None
            if settings.exemplar_regions:
                for granularity in dict.fromkeys(g for g in (settings.granularity, settings.exemplar_granularity) if g):
                    regions = everything(maps, features, replace(settings, granularity=granularity), shape,
                                         self._guide, timings)
                    found = regions_alike(regions.labels, regions.instance_scores, painted, rgb, bounds)
                    alike = found if alike is None else joined_where_free(*alike, *found)
            return segment_maps(maps, settings, shape, prior, None, self._guide, timings, painted=painted,
                                exemplar_areas=areas, exemplar_bounds=bounds,
                                alike_regions=alike)

    def segment_label(self, labels: Any, label_id: int, expression: Optional[str] = None, margin: float = 0.25,
                      **overrides: Any) -> Segmentation:
        """One existing label segmented again inside its bounding box (grown by ``margin`` of its size
        on each side), the label itself as prior; every other painted label is left out of the mask.
        Grow or shrink the result with clicks: ``refine(result, positive=..., negative=...)`` keeps the
        box and the other labels out."""
        with self.model.lock:
            shape = self._require_image().shape[:2]
            labels, (label_id,) = check_exemplars(labels, [label_id], shape)
            rows, cols = np.nonzero(labels == label_id)
            grow_r, grow_c = margin * (np.ptp(rows) + 1), margin * (np.ptp(cols) + 1)
            box = check_box((rows.min() - grow_r, cols.min() - grow_c, rows.max() + 1 + grow_r,
                             cols.max() + 1 + grow_c), shape)
            maps, settings, _, timings = self._wordless(expression, overrides)
            others = (labels != 0) & (labels != label_id)
            return segment_maps(maps, settings, shape, labels == label_id, box, self._guide, timings,
                                painted=others)

    def segment_everything(self, **overrides: Any) -> Segmentation:
        """No words, no clicks: the image split into regions (see :func:`everything`), each a label."""
        with self.model.lock:
            shape = self._require_image().shape[:2]
            maps, settings, features, timings = self._wordless(None, overrides)
            return everything(maps, features, settings, shape, self._guide, timings)


def everything(maps: CapturedMaps, features: torch.Tensor, settings: SegmentationSettings, shape: tuple[int, int],
               guide: Optional[ImageGuide], timings: dict) -> Segmentation:
    """Regions from ``granularity`` k-means clusters of the work-grid features: each cluster's
    prototype against the others' scores every cell (step 6), the scores follow the image's edges
    (step 7), each pixel joins its best cluster, and each cluster's pixels split into objects as
    instance mode splits a mask. ``labels``: one id per region, by decreasing score."""
    flat = features.reshape(features.shape[0], -1)
    flat = torch.nn.functional.normalize(flat - flat.mean(dim=1, keepdim=True), dim=0)  # the common part dropped
    features = flat.reshape(features.shape)
    means = kmeans_means(flat, settings.granularity, settings.seed)
    grid = tuple(features.shape[1:])
    cell = max(shape[0] / grid[0], shape[1] / grid[1])
    maps_s = []
    for c in range(len(means)):
        others = torch.cat([means[:c], means[c + 1:]]) if len(means) > 1 else torch.zeros_like(means)
        s = to_image_size(score(features, means[c:c + 1], others, settings.temperature), shape)
        if settings.edge_refine != "none" and guide is not None:
            s = guide.refine(s, settings.edge_refine, cell, settings.edge_radius, settings.edge_eps)
        maps_s.append(s)
    stacked = np.stack(maps_s)
    best, winning = stacked.argmax(axis=0), stacked.max(axis=0)
    labels, values = np.zeros(shape, np.int32), []
    for c in range(len(means)):
        part, part_values = split_instances(best == c, winning, winning, settings.instance_split,
                                            settings.split_depth, settings.min_instance_size)  # no prior: no score cut
        labels[part > 0] = part[part > 0] + len(values)
        values += part_values
    labels, ranked = by_score(labels, values)
    empty = np.zeros((0, features.shape[0]), np.float32)
    return Segmentation(
        expression="", instruction="", truncated=False, mask=labels > 0, scores=winning.astype(np.float32),
        settings=settings, timings=timings, features=features.numpy(), prior_work=np.zeros(grid, np.float32),
        fg_prototypes=means.numpy(), bg_prototypes=empty, guide=guide, labels=labels,
        instance_scores=tuple(float(v) for v in ranked),
    )
