"""Volumes and time series as one object: one 3-D mask, not a mask per plane.

Segmenting a stack plane by plane gives each plane its own prototypes and its own idea of which
thing the expression names, so a cell that drifts between planes may be found on some and lost,
or swapped for a neighbour, on others. Here a survey of a few planes (evenly spread) finds the
one where the expression points most clearly (the highest confidence); steps 5-7 there give the
object's prototypes. Then, plane by plane outwards in both directions, each plane's own prior is
weighted by the previous plane's mask (widened by one work-grid cell) and the start plane's
prototypes join the plane's own, so the same object is followed. A direction stops where the mask
vanishes, where it overlaps the previous plane's by less than ``min_overlap`` (IoU), or where the
plane's confidence falls below ``min_confidence`` × the start plane's. Clicks on any plane join that
plane's prototypes and, from there on, the carried ones.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .discriminate import Point
from .edges import ImageGuide
from .image import resize, to_rgb_float
from .prompts import check_box
from .settings import SegmentationSettings
from .stages import Segmentation, expression_prior, picked_prior, segment_maps
from .tiling import COARSE_FLOOR, Cancelled, instruction_for, picture_forward

MIN_OVERLAP = 0.3  # IoU with the previous plane's mask below which the object is taken as lost
MIN_CONFIDENCE = 0.5  # share of the start plane's confidence below which the expression is taken as gone
SURVEY = 8  # planes whose confidence is measured to choose the start

Clicks = dict[int, tuple[Sequence[Point], Sequence[Point]]]  # plane → (positive, negative) (row, col) pixels


@dataclass
class VolumeSegmentation:
    """One expression's object through a stack: ``mask`` Z×H×W (bool), True on the planes in ``planes``
    only. ``start``: the plane it was found on first; ``confidences`` and ``overlaps`` (IoU with the
    previous plane's mask) per plane segmented; ``stopped``: why each direction ended."""

    expression: str
    settings: SegmentationSettings
    mask: np.ndarray
    start: int
    planes: tuple[int, ...]
    confidences: dict[int, float]
    overlaps: dict[int, float]
    stopped: dict[str, str] = field(default_factory=dict)
    prototypes: Optional[np.ndarray] = field(default=None, repr=False)  # the carried foreground prototypes


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


def _follow(prior: torch.Tensor, previous: np.ndarray) -> torch.Tensor:
    """A plane's own prior weighted by where the previous plane's mask was (one work-grid cell wider)."""
    near = resize(torch.from_numpy(previous.astype(np.float32)), tuple(prior.shape))
    near = F.max_pool2d(near[None, None], 3, stride=1, padding=1)[0, 0].clamp(0.0, 1.0)
    return prior * (COARSE_FLOOR + (1.0 - COARSE_FLOOR) * near)


class _Stack:
    """Planes of a Z×H×W(×C) array-like, read one at a time, all scaled by the stack's range."""

    def __init__(self, planes: Any):
        self.planes = planes
        self.depth = int(planes.shape[0])
        low, high = np.inf, -np.inf
        for z in range(self.depth):
            plane = np.asarray(planes[z])
            plane = plane[..., :3] if plane.ndim == 3 and plane.shape[2] == 4 else plane
            low, high = min(low, float(plane.min())), max(high, float(plane.max()))
        self.value_range = (low, high)

    def read(self, z: int) -> np.ndarray:
        return to_rgb_float(np.asarray(self.planes[z]), self.value_range)


def volume_planes(segmenter, planes: Any, expression: str, box: Optional[Sequence[float]] = None,
                  clicks: Optional[Clicks] = None, min_overlap: float = MIN_OVERLAP,
                  min_confidence: float = MIN_CONFIDENCE, survey: int = SURVEY, **overrides: Any
                  ) -> Iterator[tuple[int, Segmentation]]:
    """The planes of :func:`segment_volume` one by one, as (plane, its segmentation), the start plane
    first; the generator returns the :class:`VolumeSegmentation`."""
    settings = segmenter.resolve_settings(**overrides)
    stack, clicks = _Stack(planes), dict(clicks or {})
    instruction = instruction_for(segmenter, expression, settings)
    shape = stack.read(0).shape[:2]
    box = None if box is None else check_box(box, shape)

    def plane(z: int, previous: Optional[np.ndarray], carried: Optional[np.ndarray]) -> tuple[Segmentation, float]:
        rgb = stack.read(z)
        forward = picture_forward(segmenter, rgb, [instruction], settings)
        maps = forward.maps(0)
        own, confidence = picked_prior(maps, settings, shape, box, ImageGuide(rgb))
        prior = own if previous is None else _follow(own, previous)
        positive, negative = (tuple(map(tuple, p)) for p in clicks.get(z, ((), ())))
        result = segment_maps(maps, settings, shape, prior, box, ImageGuide(rgb), forward.timings, positive,
                              negative, carried=carried)
        return result, confidence

    surveyed = sorted({round(v) for v in np.linspace(0, stack.depth - 1, max(1, min(survey, stack.depth)))})
    confidences = {}
    for z in surveyed:  # the prior's confidence only: no steps 6-7
        maps = picture_forward(segmenter, stack.read(z), [instruction], settings).maps(0)
        confidences[z] = expression_prior(maps, settings, shape, box)[1]  # the same for either pick
    start = max(surveyed, key=lambda z: (confidences[z], -z))
    first, confidences[start] = plane(start, None, None)
    yield start, first
    mask = np.zeros((stack.depth, *shape), bool)
    mask[start] = first.mask
    carried, overlaps, stopped = first.fg_prototypes, {}, {}
    for step, name in ((1, "up"), (-1, "down")):
        previous, z, prototypes = first.mask, start + step, carried
        stopped[name] = "the stack's end" if first.mask.any() else f"nothing found on plane {start}"
        while 0 <= z < stack.depth and previous.any():
            result, confidence = plane(z, previous, prototypes)
            confidences[z], overlaps[z] = confidence, _iou(result.mask, previous)
            if confidence < min_confidence * confidences[start] or overlaps[z] < min_overlap or not result.mask.any():
                stopped[name] = f"plane {z}: " + ("confidence" if confidence < min_confidence * confidences[start]
                                                  else "overlap")
                break
            mask[z], previous = result.mask, result.mask
            clicked = len(clicks.get(z, ((), ()))[0])
            if clicked:  # the clicked features join the carried prototypes from here on
                prototypes = np.concatenate([prototypes, result.fg_prototypes[-clicked:]])
            yield z, result
            z += step
    spanned = tuple(int(z) for z in np.flatnonzero(mask.reshape(stack.depth, -1).any(axis=1)))
    return VolumeSegmentation(expression, settings, mask, start, spanned, confidences, overlaps, stopped, carried)


def segment_volume(segmenter, planes: Any, expression: str, box: Optional[Sequence[float]] = None,
                   clicks: Optional[Clicks] = None, progress: Optional[Callable[[int, Segmentation], None]] = None,
                   cancelled: Optional[threading.Event] = None, **options: Any) -> VolumeSegmentation:
    """Segment what ``expression`` names through a stack as ONE object (see the module docstring).

    ``planes``: Z×H×W(×3|4), any array that slices by plane (numpy, dask, zarr); read one plane at a
    time. ``box``: (row0, col0, row1, col1) pixels confining every plane; ``clicks``: {plane:
    (positive, negative)} (row, col) pixels. ``progress(plane, segmentation)`` after each plane; a set
    ``cancelled`` event stops between planes (:class:`Cancelled`). ``options``: ``min_overlap``,
    ``min_confidence``, ``survey`` and any setting.
    """
    steps = volume_planes(segmenter, planes, expression, box, clicks, **options)
    while True:
        if cancelled is not None and cancelled.is_set():
            raise Cancelled("stopped between planes")
        try:
            z, result = next(steps)
        except StopIteration as done:
            return done.value
        if progress is not None:
            progress(z, result)
