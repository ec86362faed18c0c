"""Large 2-D images, coarse to fine.

Resizing a 4096-pixel image to the model's 512 makes a 40-pixel object 5 pixels wide before the
model sees it. Here a first pass on the whole image at model resolution (an overview read band by
band, or a pyramid level) finds where the expression points: its prior and mask. Only the tiles
that matter — where that mask or the upper half of that prior lies, widened by one overlap, or
every tile a box touches — then run at full resolution: model-size tiles overlapping by
``tile_overlap``, each with its own forward and steps 5-7, its prior weighted by the coarse
prior and, in the stitched prior, by its own confidence, so that tiles compare (each tile's prior
is scaled to its own maximum: a tile of background alone would otherwise look as sure as the
object's). Their scores and priors are blended in the overlaps (weights falling towards a tile's
edge) and one mask is stitched at the image's size. Memory grows with
one tile (and the float maps over the visited tiles' bounding box), not with the image; the
image itself is read region by region from any array that slices (numpy, dask, zarr).
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Optional, Sequence, Union

import numpy as np
import torch
from scipy.ndimage import distance_transform_edt

from .budget import image_needs
from .edges import ImageGuide
from .forward import ForwardResult, Rows, relevance_baseline, run_forward
from .image import data_range, model_size, resize, to_rgb_float
from .instruction import Instruction, build_instruction
from .mask import make_mask
from .prompts import Box, box_mask, check_box
from .settings import SegmentationSettings
from .stages import Segmentation, picked_prior, segment_maps, work_grid_of

TILING_AUTO_SIDE = 2048  # tiling="auto" tiles images whose long side exceeds this and 4x the resolution
TILING_AUTO_MAX_TILES = 4096  # ... and that this many tiles cover (a 64-px model on a photo: resized instead)
COARSE_LEVEL = 0.5  # a place matters where the coarse prior reaches this share of its maximum
COARSE_FLOOR = 0.25  # a tile's own prior is weighted by floor + (1 - floor) x the coarse prior there
BAND_PIXELS = 2**22  # pixels read at once when an overview is made from the full image (48 MiB as float RGB)


class Cancelled(Exception):
    """A tiled or volume run was stopped by its caller between two tiles or planes."""


def tile_geometry(settings: SegmentationSettings) -> tuple[int, int]:
    """(side, overlap) of the tiles in image pixels (resolved settings: an int resolution)."""
    side = settings.resolution if settings.tile_size == "auto" else int(settings.tile_size)
    return side, min(side - 1, round(side * settings.tile_overlap))


def tiling_applies(settings: SegmentationSettings, shape: Sequence[int]) -> bool:
    """Whether ``settings.tiling`` tiles an image of ``shape`` (resolved settings: an int resolution)."""
    if settings.tiling == "off":
        return False
    if settings.tiling == "always":
        return True
    side, overlap = tile_geometry(settings)
    tiles = math.prod(len(tile_boxes((n, side), side, overlap)) for n in shape[:2])  # rows × columns
    return max(shape[:2]) > max(TILING_AUTO_SIDE, 4 * side) and tiles <= TILING_AUTO_MAX_TILES


def tile_boxes(shape: Sequence[int], side: int, overlap: int) -> list[Box]:
    """(row0, col0, row1, col1) tiles of ``side`` pixels covering ``shape``, neighbours sharing
    ``overlap`` pixels (the last row and column of tiles flush with the image's edge)."""
    stride = max(1, side - overlap)

    def starts(n: int) -> list[int]:
        if n <= side:
            return [0]
        return [*range(0, n - side, stride), n - side]

    height, width = shape[:2]
    return [(r, c, min(r + side, height), min(c + side, width)) for r in starts(height) for c in starts(width)]


class ImageSource:
    """An image read region by region: a numpy, dask or zarr H×W(×C) array, or a multiscale list of
    them (finest first, as napari's multiscale layers hold them). Integer and float data are scaled
    by the whole image's range, so every tile is scaled alike."""

    def __init__(self, data: Union[Any, Sequence[Any]], value_range: Optional[tuple[float, float]] = None):
        self.levels = list(data) if isinstance(data, (list, tuple)) else [data]
        self.shape: tuple[int, int] = tuple(int(n) for n in self.levels[0].shape[:2])
        self._range = value_range

    @property
    def value_range(self) -> tuple[float, float]:
        """(min, max) of the data; of a multiscale image's coarsest level (its extremes are the image's,
        near enough for the scaling rule of :func:`~napari_editseg.core.image.integer_scale`)."""
        if self._range is None:
            self._range = data_range(self.levels[-1] if len(self.levels) > 1 else self.levels[0], BAND_PIXELS)
        return self._range

    def read(self, box: Box) -> np.ndarray:
        """The float RGB pixels of ``box`` at full resolution."""
        r0, c0, r1, c1 = box
        return to_rgb_float(np.asarray(self.levels[0][r0:r1, c0:c1]), self.value_range)

    def overview(self, side: int) -> np.ndarray:
        """The whole image as float RGB with its long side between ``side`` and twice that (or the
        image itself when smaller): the coarsest pyramid level that is large enough, block-averaged
        band by band. Up to factor-1 pixels at the bottom and right edges are left out."""
        level = next((lv for lv in reversed(self.levels) if max(lv.shape[:2]) >= side), self.levels[0])
        height, width = level.shape[:2]
        factor = max(1, max(height, width) // side)
        if factor == 1:  # sliced, not np.asarray(level): a lazy plane reads itself only when sliced
            return to_rgb_float(np.asarray(level[:height, :width]), self.value_range)
        rows, cols = height // factor, width // factor
        out = np.empty((rows, cols, 3), np.float32)
        band = max(1, BAND_PIXELS // max(1, width) // factor) * factor
        for r in range(0, rows * factor, band):
            n = min(band, rows * factor - r)
            pixels = to_rgb_float(np.asarray(level[r:r + n, :cols * factor]), self.value_range)
            out[r // factor:(r + n) // factor] = pixels.reshape(n // factor, factor, cols, factor, 3).mean(axis=(1, 3))
        return out


def picture_forward(segmenter, rgb: np.ndarray, instructions: list[Instruction], settings: SegmentationSettings,
                    relevance: bool = True) -> ForwardResult:
    """ONE denoiser forward for ``instructions`` on a picture that is not the segmenter's set image
    (an overview, a tile, a plane); its latents come from the segmenter's latent cache when set."""
    plan = segmenter.layout.plan(settings)
    baseline = relevance_baseline(settings) if relevance else None
    size = model_size(*rgb.shape[:2], settings.resolution, settings.size_multiple, settings.keep_aspect)
    rows = (len(instructions) + (baseline is not None)) * settings.noise_samples
    segmenter._check_memory(settings, plan, size, rows, len(instructions), image_needs(*rgb.shape[:2]), encodes=1)
    with segmenter.model.lock:  # the capture swaps the denoiser's processors: one forward at a time per model
        latents = segmenter.encode_picture(rgb, size)
        return run_forward(segmenter.model, settings, plan, [Rows(instructions, latents)], True, baseline)[0]


def instruction_for(segmenter, expression: str, settings: SegmentationSettings) -> Instruction:
    model = segmenter.model
    return build_instruction(expression, settings.instruction_template, model.tokenizer, model.max_tokens)


@dataclass
class TiledSegmentation:
    """One expression on a large image: the coarse pass and the stitched full-resolution tiles.

    ``mask``, ``scores`` and ``prior`` cover ``region`` (row0, col0, row1, col1), the bounding box of
    the visited ``tiles``; :meth:`full_mask` gives the mask at the image's size (``shape``) and
    :meth:`write` paints it into any array that takes slices (numpy, zarr) tile by tile.
    """

    expression: str
    settings: SegmentationSettings
    shape: tuple[int, int]
    region: Box
    mask: np.ndarray
    scores: np.ndarray
    prior: np.ndarray
    tiles: tuple[Box, ...]
    coarse: Segmentation
    confidence: float
    box: Optional[Box] = None
    timings: dict = field(default_factory=dict)

    def full_mask(self) -> np.ndarray:
        full = np.zeros(self.shape, bool)
        r0, c0, r1, c1 = self.region
        full[r0:r1, c0:c1] = self.mask
        return full

    def full_scores(self) -> np.ndarray:
        full = np.zeros(self.shape, np.float32)
        r0, c0, r1, c1 = self.region
        full[r0:r1, c0:c1] = self.scores
        return full

    def write(self, target: Any, value: int = 1, block: int = 4096) -> None:
        """Set ``value`` where the mask is, in ``target`` (H×W), ``block`` pixels a side at a time."""
        r0, c0, r1, c1 = self.region
        for r in range(r0, r1, block):
            for c in range(c0, c1, block):
                part = self.mask[r - r0:min(r + block, r1) - r0, c - c0:min(c + block, c1) - c0]
                if part.any():
                    window = (slice(r, r + part.shape[0]), slice(c, c + part.shape[1]))
                    current = np.asarray(target[window])
                    target[window] = np.where(part, value, current)

    @property
    def found(self) -> bool:
        return self.confidence >= self.settings.min_confidence

    def as_segmentation(self) -> Segmentation:
        """This result as a :class:`Segmentation` at the image's size: the stitched mask and scores;
        the work-grid parts (prior, features, prototypes) are the coarse pass's; ``tiles`` says which ran."""
        return replace(self.coarse, mask=self.full_mask(), scores=self.full_scores(), confidence=self.confidence,
                       box=self.box, tiles=self.tiles, guide=None, timings={**self.coarse.timings, **self.timings})


def _ramp(n: int, overlap: int) -> np.ndarray:
    """Blending weights along one side of a tile: rising over ``overlap`` pixels from each edge."""
    i = np.arange(n, dtype=np.float32)
    return np.clip(np.minimum(i + 1, n - i) / (overlap + 1), 1e-3, 1.0)


def _crop(picture_map: np.ndarray, shape: tuple[int, int], box: Box) -> torch.Tensor:
    """The part of an overview-sized map over the image ``box`` (image of ``shape``), as a tensor."""
    h, w = picture_map.shape
    r0, c0 = int(box[0] * h / shape[0]), int(box[1] * w / shape[1])
    r1, c1 = max(r0 + 1, -(-box[2] * h // shape[0])), max(c0 + 1, -(-box[3] * w // shape[1]))
    return torch.from_numpy(np.ascontiguousarray(picture_map[r0:r1, c0:c1]))


def _tiles_that_matter(coarse: Segmentation, shape: tuple[int, int], tiles: list[Box], overlap: int,
                       box: Optional[Box]) -> list[Box]:
    """Every tile a box touches; without one, the tiles where the coarse mask or the upper part of the
    coarse prior lies, widened by one overlap."""
    if box is not None:
        return [t for t in tiles if t[0] < box[2] and box[0] < t[2] and t[1] < box[3] and box[1] < t[3]]
    prior = coarse.prior
    where = coarse.mask | (prior >= COARSE_LEVEL * prior.max()) if prior.max() > 0 else coarse.mask
    widen = overlap * where.shape[0] / shape[0]
    if where.any() and widen > 0:
        where = distance_transform_edt(~where) <= widen
    return [t for t in tiles if _crop(where, shape, t).any()]


def segment_tiled(segmenter, image: Any, expression: str, box: Optional[Sequence[float]] = None,
                  progress: Optional[Callable[[int, int], None]] = None,
                  cancelled: Optional[threading.Event] = None, **overrides: Any) -> TiledSegmentation:
    """Segment what ``expression`` names in a large image, coarse to fine (see the module docstring).

    ``image``: an :class:`ImageSource`, or what one takes (a numpy / dask / zarr array, a list of
    pyramid levels). ``box``: (row0, col0, row1, col1) pixels; the tiles it touches run, and the prior
    and mask are confined to it. ``progress(done, total)`` is called after each tile; a set
    ``cancelled`` event stops the run between tiles (:class:`Cancelled`).
    """
    start = time.perf_counter()
    settings = segmenter.resolve_settings(**overrides)
    source = image if isinstance(image, ImageSource) else ImageSource(image)
    shape = source.shape
    box = None if box is None else check_box(box, shape)
    instruction = instruction_for(segmenter, expression, settings)
    overview = source.overview(settings.resolution)
    scale = (overview.shape[0] / shape[0], overview.shape[1] / shape[1])
    coarse_box = None if box is None else check_box(
        (box[0] * scale[0], box[1] * scale[1], box[2] * scale[0], box[3] * scale[1]), overview.shape[:2])
    forward = picture_forward(segmenter, overview, [instruction], settings)
    coarse = segment_maps(forward.maps(0), settings, overview.shape[:2], None, coarse_box, ImageGuide(overview),
                          forward.timings)
    side, overlap = tile_geometry(settings)
    chosen = _tiles_that_matter(coarse, shape, tile_boxes(shape, side, overlap), overlap, box)
    stitch = _Stitch(chosen, overlap)
    coarse_prior = coarse.prior / max(float(coarse.prior.max()), 1e-12)
    for done, tile in enumerate(chosen, 1):
        if cancelled is not None and cancelled.is_set():
            raise Cancelled("stopped between tiles")
        scores, prior, confidence = _run_tile(segmenter, source, tile, instruction, settings,
                                              _crop(coarse_prior, shape, tile), box)
        stitch.add(tile, scores, prior * confidence, confidence)  # a tile whose words compete counts less
        if progress is not None:
            progress(done, len(chosen))
    mask, scores, prior, confidence = stitch.result(settings, box, coarse.confidence)
    return TiledSegmentation(expression, settings, shape, stitch.region, mask, scores, prior, tuple(chosen), coarse,
                             confidence, box, {"total": time.perf_counter() - start, "tiles": len(chosen)})


def _run_tile(segmenter, source: ImageSource, tile: Box, instruction: Instruction, settings: SegmentationSettings,
              coarse: torch.Tensor, box: Optional[Box]) -> tuple[np.ndarray, np.ndarray, float]:
    """One tile at full resolution: its scores and prior (tile-sized) and its own prior's confidence."""
    rgb = source.read(tile)
    shape = rgb.shape[:2]
    inside = None if box is None else check_box((box[0] - tile[0], box[1] - tile[1], box[2] - tile[0],
                                                 box[3] - tile[1]), shape)
    forward = picture_forward(segmenter, rgb, [instruction], settings)
    maps = forward.maps(0)
    own, confidence = picked_prior(maps, settings, shape, inside, ImageGuide(rgb))
    weight = resize(coarse, work_grid_of(maps.latent_grid, settings.work_resolution)).clamp(0.0, 1.0)
    prior = own * (COARSE_FLOOR + (1.0 - COARSE_FLOOR) * weight)
    result = segment_maps(maps, settings, shape, prior, inside, ImageGuide(rgb), forward.timings)
    return result.scores, result.prior, confidence


RETHRESHOLD = frozenset({"mask_threshold", "keep", "fill_holes", "min_confidence"})  # step 7 alone


def refine_tiled(segmentation: Segmentation, positive: Sequence, negative: Sequence, prior: Any,
                 overrides: dict) -> Segmentation:
    """``refine`` on a stitched result: its full-size scores thresholded again (the settings of step 7
    only); clicks, a new prior or settings of step 6 would need each tile again, and are refused."""
    changed = {k for k, v in overrides.items() if getattr(segmentation.settings, k) != v}
    if positive or negative or prior is not None or changed - RETHRESHOLD:
        raise ValueError("this result was stitched from tiles (tiling): refine can only threshold it again "
                         f"({', '.join(sorted(RETHRESHOLD))}); segment again for the rest, or with tiling='off'")
    settings = segmentation.settings.replace(**overrides)
    if not changed:
        return segmentation
    mask = make_mask(segmentation.scores, segmentation.prior, settings.mask_threshold, settings.keep,
                     settings.fill_holes)
    if segmentation.box is not None:
        mask &= box_mask(segmentation.box, mask.shape)
    return replace(segmentation, mask=mask, settings=settings)


class _Stitch:
    """Weighted sums of the tiles' scores and priors over the visited tiles' bounding box."""

    def __init__(self, tiles: list[Box], overlap: int):
        self.region = (min(t[0] for t in tiles), min(t[1] for t in tiles), max(t[2] for t in tiles),
                       max(t[3] for t in tiles)) if tiles else (0, 0, 0, 0)
        size = (self.region[2] - self.region[0], self.region[3] - self.region[1])
        self.scores, self.prior, self.weight = (np.zeros(size, np.float32) for _ in range(3))
        self.overlap = overlap
        self.confidences: list[tuple[float, float]] = []  # (peak of the tile's prior, its confidence)

    def add(self, tile: Box, scores: np.ndarray, prior: np.ndarray, confidence: float) -> None:
        window = (slice(tile[0] - self.region[0], tile[2] - self.region[0]),
                  slice(tile[1] - self.region[1], tile[3] - self.region[1]))
        weight = np.outer(_ramp(scores.shape[0], self.overlap), _ramp(scores.shape[1], self.overlap))
        self.scores[window] += weight * scores
        self.prior[window] += weight * prior
        self.weight[window] += weight
        self.confidences.append((float(prior.max()), confidence))

    def result(self, settings: SegmentationSettings, box: Optional[Box], fallback: float
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
        """The blended scores and prior, the mask (step 7 on them) and the confidence of the tile that
        holds the stitched prior's peak."""
        covered = np.maximum(self.weight, 1e-12)
        scores, prior = self.scores / covered, self.prior / covered
        mask = make_mask(scores, prior, settings.mask_threshold, settings.keep, settings.fill_holes)
        if box is not None:
            r0, c0 = self.region[:2]
            inside = np.zeros(mask.shape, bool)
            inside[max(0, box[0] - r0):max(0, box[2] - r0), max(0, box[1] - c0):max(0, box[3] - c0)] = True
            mask &= inside
        confidence = max(self.confidences)[1] if self.confidences else fallback
        return mask, scores, prior, confidence
