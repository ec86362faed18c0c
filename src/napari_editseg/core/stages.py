"""Steps 5-7 as functions over data: from one expression's captured maps to a mask.

:func:`segment_maps` is the whole of steps 5-7 for ONE expression's :class:`CapturedMaps` on one
picture of a given size — an image, a tile of one, a plane of a stack — with an optional prior
supplied in place of step 5's. :func:`delineate` is steps 6-7 alone on a :class:`Segmentation`'s
cached work-grid features and prior (what ``refine`` re-runs with no denoiser pass). Neither knows
which image is set on a segmenter, nor which family's forward captured the maps.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field, replace
from typing import Any, Mapping, Optional

import numpy as np
import torch

from .alike import coloured_alike
from .discriminate import Point, features_at, pixel_features, score, to_grid
from .edges import ImageGuide
from .forward import CapturedMaps, Grid
from .image import resize
from .instances import Instance, describe, joined_where_free, sized_like, split_instances, without_painted
from .mask import make_mask, score_contrast, to_image_size
from .prior import PRIOR_SOURCES, cut_links, expression_attention, peak_dominance, propagate
from .prompts import Box, box_mask, box_prototypes, confine_prior
from .settings import SegmentationSettings

ROUNDING = 1e-4  # how far outside [0, 1] a supplied prior may stray (a resized mask's float rounding)
RENAMED_TIMINGS = {"unet": "denoiser"}  # old key → new key; the old one is read for one more release (0.2)


class Timings(dict):
    """Seconds per stage. A key renamed in 0.2 (``"unet"``, now ``"denoiser"``) still reads, with a
    DeprecationWarning, until 0.3; iterating shows only the current keys."""

    def __missing__(self, key: str) -> float:
        if key in RENAMED_TIMINGS and RENAMED_TIMINGS[key] in self:
            warnings.warn(f"timings[{key!r}] is now timings[{RENAMED_TIMINGS[key]!r}]; the old key goes in 0.3",
                          DeprecationWarning, stacklevel=2)
            return self[RENAMED_TIMINGS[key]]
        raise KeyError(key)

    def get(self, key: str, default: Any = None) -> Any:
        try:
            return self[key]
        except KeyError:
            return default


@dataclass
class Segmentation:
    """One expression's result. Arrays are numpy; ``mask``, ``scores`` and ``prior`` are at the
    picture's own size (H×W, the size ``mask`` has).

    ``features`` (D×h×w, unit vectors) and ``prior_work`` (h×w) are the work-grid inputs of the last
    stages, kept so :meth:`EditSegmenter.refine` needs no denoiser pass. The prior is stored once, on
    the work grid; ``prior`` (H×W) is derived from it.
    """

    expression: str
    instruction: str
    truncated: bool
    mask: np.ndarray  # bool H×W
    scores: np.ndarray  # float32 H×W in [0, 1]: S, foreground probability
    settings: SegmentationSettings
    timings: dict[str, float]
    features: np.ndarray
    prior_work: np.ndarray  # float32 h×w in [0, 1]: P on the work grid, where the model looked
    fg_prototypes: np.ndarray
    bg_prototypes: np.ndarray
    positive: tuple[Point, ...] = ()
    negative: tuple[Point, ...] = ()
    confidence: float = 1.0  # in [0, 1]: does the expression point at one thing? (see ``found``)
    # float32 h×w: the map whose peak keep=peak keeps the mask's part at (peak_links); None: the prior's
    peak_work: Optional[np.ndarray] = field(default=None, repr=False)
    box: Optional[Box] = None  # (row0, col0, row1, col1) pixels the prior and mask were confined to
    guide: Optional[ImageGuide] = field(default=None, repr=False)  # the image, for edge_refine in refine()
    # the prototypes the prior alone gives, with the settings that chose them: a re-threshold or
    # a click reuses them instead of clustering the background again
    prior_prototypes: Optional[tuple] = field(default=None, repr=False, compare=False)
    # with the ``instances`` setting: int32 H×W, 0 = none, one id per object (1…n by decreasing
    # score), and each id's score in [0, 1] (core/instances.py); None and () otherwise
    labels: Optional[np.ndarray] = field(default=None, repr=False)
    instance_scores: tuple[float, ...] = ()
    # bool H×W: pixels the user has painted (segment_like, segment_label); no mask or instance claims them
    painted: Optional[np.ndarray] = field(default=None, repr=False)
    # areas (pixels) of the exemplars a segment_like run started from: instances are kept near their size
    exemplar_areas: tuple[int, ...] = ()
    # (low, high) attributes of objects like those exemplars (core/alike.exemplar_bounds): the
    # instances are kept within their colour and contrast (exemplar_colour)
    exemplar_bounds: Optional[tuple[np.ndarray, np.ndarray]] = field(default=None, repr=False, compare=False)
    # int32 H×W regions alike in form and colour to those exemplars (exemplar_regions), ids 1…k, with
    # their scores: they join the instances wherever the instances leave them free
    alike_regions: Optional[tuple[np.ndarray, tuple[float, ...]]] = field(default=None, repr=False, compare=False)
    # foreground prototypes brought from elsewhere (a volume's start plane): they join every re-score
    carried: Optional[np.ndarray] = field(default=None, repr=False, compare=False)
    tiles: tuple = ()  # (row0, col0, row1, col1) image boxes run at full resolution (a tiled result)

    def __post_init__(self) -> None:
        if not isinstance(self.timings, Timings):
            self.timings = Timings(self.timings)

    @property
    def prior(self) -> np.ndarray:
        """P at the picture's size: float32 H×W in [0, 1], the work-grid prior resized bilinearly."""
        return to_image_size(torch.from_numpy(self.prior_work), self.mask.shape)

    @property
    def area(self) -> float:
        """Share of the image inside the mask."""
        return float(self.mask.mean())

    @property
    def instances(self) -> list[Instance]:
        """Id, area (pixels), centroid ((row, col) pixels) and score of each object, with the
        ``instances`` setting; an empty list without it."""
        return [] if self.labels is None else describe(self.labels, self.instance_scores)

    @property
    def found(self) -> bool:
        """False when ``confidence`` lies below the ``min_confidence`` setting: "nothing found"."""
        return self.confidence >= self.settings.min_confidence


def work_grid_of(latent_grid: Grid, work_resolution: int) -> Grid:
    """The work grid: the latent grid scaled so that its long side is ``work_resolution``."""
    h, w = latent_grid
    side = max(h, w)
    return max(1, round(h * work_resolution / side)), max(1, round(w * work_resolution / side))


def fit_prior(prior: Any, grid: Grid) -> torch.Tensor:
    """A supplied prior on ``grid``: any 2-D array (numpy or torch) of finite values in [0, 1] (higher =
    the object; a bool mask works), at the picture's own size, on the work grid or on any other grid;
    resized bilinearly (antialiased when shrinking) unless it is on ``grid`` already, then clipped to
    [0, 1]. Anything else is refused with one line."""
    array = np.asarray(prior.detach().cpu() if isinstance(prior, torch.Tensor) else prior)
    if array.ndim != 2 or 0 in array.shape or not (np.issubdtype(array.dtype, np.number) or array.dtype == bool):
        raise ValueError(f"prior must be a 2-D map (H×W) of numbers in [0, 1]; got an array of shape "
                         f"{array.shape} and dtype {array.dtype}")
    values = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    if not torch.isfinite(values).all() or values.min() < -ROUNDING or values.max() > 1 + ROUNDING:
        raise ValueError("prior must hold finite values in [0, 1] (scale it first, e.g. divide by its maximum)")
    return resize(values, grid).clamp(0.0, 1.0)


def initial_prior(maps: CapturedMaps, settings: SegmentationSettings, work_grid: Grid) -> torch.Tensor:
    """P0 on the work grid, from what ``prior_source`` reads (:data:`~napari_editseg.core.prior.PRIOR_SOURCES`)."""
    source = PRIOR_SOURCES[settings.prior_source]
    attention = relevance = None
    if source.attention:
        i = maps.instruction
        attention = expression_attention(maps.cross, maps.cross_grids, i.token_positions, settings.token_reduce,
                                         work_grid, i.word_positions, settings.token_norm, settings.token_scale)
    if source.relevance:
        if maps.relevance is None:
            raise ValueError(f"prior_source={settings.prior_source!r} reads the relevance, which this forward "
                             "did not compute: run it with the same prior_source")
        relevance = resize(maps.relevance, work_grid)
    return source.combine(attention, relevance)


def expression_prior(maps: CapturedMaps, settings: SegmentationSettings, shape: tuple[int, int],
                     box: Optional[Box] = None) -> tuple[torch.Tensor, float]:
    """Step 5: the propagated prior on the work grid (confined to ``box``) and its confidence."""
    work_grid = work_grid_of(maps.latent_grid, settings.work_resolution)
    p0 = confine_prior(initial_prior(maps, settings, work_grid), box, shape)
    prior_work = confine_prior(propagate(p0, maps.affinity, maps.affinity_grid, settings.propagation_steps,
                                         settings.restart, settings.smooth_steps,
                                         settings.restart_share), box, shape)
    return prior_work, peak_dominance(p0) if maps.decoy_rank is None else maps.decoy_rank


def with_links_cut(maps: CapturedMaps, share: float) -> CapturedMaps:
    """``maps`` whose affinity keeps, per cell, only its links to the ``share`` of cells most alike in the
    first feature block (:func:`~napari_editseg.core.prior.cut_links`)."""
    return replace(maps, affinity=cut_links(maps.affinity, maps.features[0], maps.affinity_grid, share))


def peak_prior(maps: CapturedMaps, settings: SegmentationSettings, shape: tuple[int, int],
               box: Optional[Box] = None) -> Optional[torch.Tensor]:
    """The map whose peak ``keep=peak`` keeps the mask's part at (``peak_links``): the walk of step 5 over
    the affinity with links between unlike cells cut; None for the prior's own peak."""
    if settings.peak_links == 0 or settings.propagation_steps == 0:
        return None
    return expression_prior(with_links_cut(maps, settings.peak_links), settings, shape, box)[0]


def picked_prior(maps: CapturedMaps, settings: SegmentationSettings, shape: tuple[int, int],
                 box: Optional[Box] = None, guide: Optional[ImageGuide] = None) -> tuple[torch.Tensor, float]:
    """Step 5 as ``prior_pick`` says: the settings' own prior, or (contrast) per image the paper's
    A^k P0 or the anchored walk, whichever steps 6-7 turn into the mask that stands out most. Which
    propagation suits a model differs between models (docs/shapes-world.md, the proxy population)."""
    if settings.prior_pick == "fixed" or settings.restart == 0 or settings.propagation_steps == 0:
        return expression_prior(maps, settings, shape, box)  # one candidate only
    fixed = settings.replace(prior_pick="fixed")
    scored = []
    for candidate in (fixed.replace(restart=0.0, smooth_steps=0), fixed):
        prior_work, confidence = expression_prior(maps, candidate, shape, box)
        result = segment_maps(maps, fixed, shape, prior_work, box, guide)
        scored.append((score_contrast(result.scores, result.mask), prior_work, confidence))
    _, prior_work, confidence = max(scored, key=lambda s: s[0])  # a tie keeps the paper's
    return prior_work, confidence


def segment_maps(maps: CapturedMaps, settings: SegmentationSettings, shape: tuple[int, int],
                 prior: Optional[Any] = None, box: Optional[Box] = None, guide: Optional[ImageGuide] = None,
                 timings: Optional[Mapping[str, float]] = None, positive: tuple[Point, ...] = (),
                 negative: tuple[Point, ...] = (), painted: Optional[np.ndarray] = None,
                 carried: Optional[np.ndarray] = None, exemplar_areas: tuple[int, ...] = (),
                 exemplar_bounds: Optional[tuple[np.ndarray, np.ndarray]] = None,
                 alike_regions: Optional[tuple[np.ndarray, tuple[float, ...]]] = None) -> Segmentation:
    """Steps 5-7 for one expression's captured maps, on a picture of ``shape`` (H, W) pixels.

    ``prior``: supplied instead of step 5's (see :func:`fit_prior` for what it may be); it is used
    as given (no propagation) and the confidence is 1, the caller's. ``box``: (row0, col0, row1,
    col1) pixels the prior and the mask are confined to; ``guide``: the picture, for ``edge_refine``;
    ``timings``: seconds of the earlier stages, carried into the result's; ``positive`` /
    ``negative``: clicked (row, col) pixels, as :func:`delineate` takes them; ``painted``: bool H×W
    pixels no mask or instance may claim (labels the user painted); ``carried``: K×D foreground
    prototypes found elsewhere (a volume's start plane) that join this picture's own;
    ``exemplar_areas``: pixels of each exemplar label, which instances are kept near (``exemplar_size``);
    ``exemplar_bounds``: (low, high) attributes whose colour and contrast they are kept within
    (``exemplar_colour``);
    ``alike_regions``: (labels, scores) of regions that join the instances where these leave them free.
    """
    start = time.perf_counter()
    work_grid = work_grid_of(maps.latent_grid, settings.work_resolution)
    peak_work = None
    if prior is None:
        prior_work, confidence = picked_prior(maps, settings, shape, box, guide)
        peak_work = peak_prior(maps, settings, shape, box)
    else:
        prior_work, confidence = confine_prior(fit_prior(prior, work_grid), box, shape), 1.0
    prior_time = time.perf_counter() - start
    features = pixel_features(maps.features, work_grid)
    empty = np.zeros((0, features.shape[0]), np.float32)
    base = Segmentation(
        expression=maps.instruction.expression, instruction=maps.instruction.encoded_text,
        truncated=maps.instruction.truncated, mask=np.zeros(shape, bool), scores=np.zeros(shape, np.float32),
        settings=settings, timings={**(timings or {}), "prior": prior_time}, features=features.cpu().numpy(),
        prior_work=prior_work.cpu().numpy(), fg_prototypes=empty, bg_prototypes=empty, confidence=confidence,
        peak_work=None if peak_work is None else peak_work.cpu().numpy(), guide=guide, box=box, painted=painted,
        carried=carried, exemplar_areas=exemplar_areas,
        exemplar_bounds=exemplar_bounds, alike_regions=alike_regions,
    )
    return delineate(base, settings, positive, negative)


def peak_image(base: Segmentation, prior_image: np.ndarray) -> np.ndarray:
    """The map whose peak ``keep=peak`` keeps the mask's part at: ``peak_links``' walk, else the prior."""
    return prior_image if base.peak_work is None else to_image_size(torch.from_numpy(base.peak_work),
                                                                    base.mask.shape)


def delineate(base: Segmentation, settings: SegmentationSettings, positive: tuple[Point, ...] = (),
              negative: tuple[Point, ...] = ()) -> Segmentation:
    """Steps 6-7 on a segmentation's cached work-grid features and prior; ``positive`` / ``negative``:
    (row, col) pixels whose features join the foreground / background prototypes."""
    start = time.perf_counter()
    features = torch.from_numpy(base.features)
    prior_work = torch.from_numpy(base.prior_work)
    shape = base.mask.shape
    grid = tuple(prior_work.shape)
    key = (settings.fg_select, settings.fg_quantile, settings.bg_quantile, settings.bg_prototypes, settings.seed,
           settings.instances,
           hash(base.prior_work.tobytes()), id(base.features), base.box)
    if base.prior_prototypes is not None and base.prior_prototypes[0] == key:
        fg, bg = (torch.from_numpy(p) for p in base.prior_prototypes[1:])
    else:
        fg, bg = box_prototypes(features, prior_work, base.box, shape, settings)
    from_prior = (key, fg.numpy(), bg.numpy())
    if base.carried is not None:
        fg = torch.cat([fg, torch.from_numpy(base.carried).to(fg)])
    fg = torch.cat([fg, features_at(features, to_grid(positive, shape, grid))])
    bg = torch.cat([bg, features_at(features, to_grid(negative, shape, grid))])
    scores_work = score(features, fg, bg, settings.temperature)
    middle = time.perf_counter()
    scores = to_image_size(scores_work, shape)
    if settings.edge_refine != "none":
        if base.guide is None:
            raise ValueError("edge_refine needs the picture: give segment_maps its guide (segment() does), or set "
                             "edge_refine='none'")
        cell = max(shape[0] / grid[0], shape[1] / grid[1])  # picture pixels per work-grid cell
        scores = base.guide.refine(scores, settings.edge_refine, cell, settings.edge_radius, settings.edge_eps)
    edges = time.perf_counter()
    prior_image = to_image_size(prior_work, shape)
    keep = "all" if settings.instances else settings.keep  # every object the words name, not one
    mask = make_mask(scores, peak_image(base, prior_image), settings.mask_threshold, keep, settings.fill_holes)
    if base.box is not None:
        mask &= box_mask(base.box, shape)
    labels, instance_scores = None, ()
    if settings.instances:
        labels, instance_scores = split_instances(mask, scores, prior_image, settings.instance_split,
                                                  settings.split_depth, settings.min_instance_size,
                                                  settings.min_instance_score)
        if base.painted is not None:
            labels, instance_scores = without_painted(labels, instance_scores, base.painted,
                                                      settings.min_instance_size)
        labels, instance_scores = sized_like(labels, instance_scores, base.exemplar_areas, settings.exemplar_size)
        if settings.exemplar_colour and base.exemplar_bounds is not None and base.guide is not None:
            labels, instance_scores = coloured_alike(labels, instance_scores, base.guide.rgb, base.exemplar_bounds)
        if base.alike_regions is not None:
            alike = sized_like(*base.alike_regions, base.exemplar_areas, settings.exemplar_size)
            labels, instance_scores = joined_where_free(labels, instance_scores, *alike)
        mask = labels > 0
    elif base.painted is not None:
        mask &= ~base.painted
    end = time.perf_counter()
    timings = {**base.timings, "discriminate": middle - start, "edges": edges - middle, "mask": end - edges}
    return replace(
        base, mask=mask, scores=scores, settings=settings, timings=timings,
        fg_prototypes=fg.numpy(), bg_prototypes=bg.numpy(), positive=positive, negative=negative,
        prior_prototypes=from_prior, labels=labels, instance_scores=instance_scores,
    )
