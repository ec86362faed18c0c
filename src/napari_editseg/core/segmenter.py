"""EditSegmenter: set an image once, then segment what each expression names.

Reads top to bottom like a diffusers pipeline, one method per stage of ``docs/method.md``:
encode image (cached) → encode instruction → one denoiser forward with capture → prior →
prototypes and scores → mask at the image's own size. Steps 1-4 are asked of the loaded model's
backbone (``core/backbones``) through :func:`~napari_editseg.core.forward.run_forward`; steps 5-7
are :func:`~napari_editseg.core.stages.segment_maps`, a function of what the forward captured.
"""

from __future__ import annotations

import functools
import math
import numbers
import time
from dataclasses import replace
from typing import Any, Callable, Iterable, Optional, Sequence, TypeVar, Union

import numpy as np
import torch

from .automatic import PromptModes
from .budget import check_memory, image_needs, vae_needs
from .discriminate import Point, pixel_features
from .edges import ImageGuide
from .forward import BaselineCache, CapturedMaps, ForwardResult, Rows, relevance_baseline, run_forward
from .image import model_size, to_model_input, to_rgb_float
from .instruction import Instruction, build_instruction, decoy_instructions
from .latent_cache import LatentCache, cached_latents
from .layout import CapturePlan
from .model import DEFAULT_MODEL, EditingModel, load_editing_model
from .prompts import NEUTRAL_INSTRUCTION, check_box, confine_prior, points_prior
from .settings import DISCRIMINATE_SETTINGS, FORWARD_SETTINGS, SegmentationSettings, check_names, resolve_propagation
from .stages import Segmentation, delineate, fit_prior, segment_maps, work_grid_of
from .tiling import ImageSource, refine_tiled, segment_tiled, tiling_applies

Method = TypeVar("Method", bound=Callable[..., Any])


def _serialised(method: Method) -> Method:
    """Run ``method`` holding the model's lock: one call at a time per loaded model."""
    @functools.wraps(method)
    def locked(self: "EditSegmenter", *args: Any, **kwargs: Any) -> Any:
        with self.model.lock:
            return method(self, *args, **kwargs)
    return locked  # type: ignore[return-value]


def _expression_list(expressions: Iterable[str]) -> list[str]:
    """Any iterable of texts as a list, taken before any work (a generator is read once)."""
    if isinstance(expressions, str):
        raise ValueError("expressions must be a list of texts; use segment() for one")
    try:
        expressions = list(expressions)
    except TypeError:
        raise ValueError(f"expressions must be a list of texts, not {type(expressions).__name__}") from None
    if not expressions:
        raise ValueError("no expressions given")
    return expressions


def _points(name: str, points: Iterable[Point]) -> tuple[Point, ...]:
    """(row, col) pixel pairs of finite numbers; anything else is refused with what is expected."""
    expected = f"{name} must be a list of (row, col) pixel points, e.g. {name}=[(120, 80)]"
    if isinstance(points, (str, bytes)):
        raise ValueError(f"{expected}; got text {points!r}")
    try:
        pairs = [tuple(point) for point in points]
    except TypeError:
        raise ValueError(f"{expected}; got {points!r}") from None
    for pair in pairs:
        if len(pair) != 2 or not all(
            isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_)) and math.isfinite(v) for v in pair
        ):
            raise ValueError(f"{expected}; {pair!r} is not a (row, col) pair of numbers")
    return tuple(tuple(v.item() if isinstance(v, np.generic) else v for v in pair) for pair in pairs)


def _instructions(model: EditingModel, expressions: Sequence[Any], settings: SegmentationSettings
                  ) -> list[Instruction]:
    """Step 3 for each expression (an Instruction is kept as it is)."""
    instructions = [
        e if isinstance(e, Instruction) else
        build_instruction(e, settings.instruction_template, model.tokenizer, model.max_tokens)
        for e in expressions
    ]
    if settings.token_norm == "contrast" and not instructions[0].template_positions:
        raise ValueError("token_norm='contrast' needs template words around '{}' in instruction_template")
    return instructions


def _decoy_rows(model: EditingModel, instructions: Sequence[Instruction], settings: SegmentationSettings,
                baseline: Optional[str]) -> list[Instruction]:
    """The ``decoys`` setting's rows; none without a baseline to measure their effects against."""
    if baseline is None:
        return []
    return decoy_instructions(instructions, settings.decoys, settings.seed, settings.instruction_template,
                              model.tokenizer, model.max_tokens)


class EditSegmenter(PromptModes):
    """Referring segmentation from one denoiser forward of an instruction-editing model.

    >>> segmenter = EditSegmenter.from_pretrained()          # timbrooks/instruct-pix2pix
    >>> segmenter.set_image(image)                           # H×W(×3|4) numpy array
    >>> result = segmenter.segment("the dog on the left")
    >>> result.mask                                          # bool H×W

    Threads: calls serialise. ``set_image``, ``forward``, ``segment``, ``segment_batch`` and
    ``refine`` each hold the loaded model's lock for their whole run, so a call from a second
    thread waits until the running one has finished: a result always belongs to the image
    that was set when its call started, and the denoiser's attention processors are never
    swapped by two calls at once. Segmenters that share one loaded model share its lock.
    """

    def __init__(self, model: EditingModel, settings: Optional[SegmentationSettings] = None, **overrides: Any):
        self.model = model
        self.layout = model.layout()
        self.settings = (settings or SegmentationSettings()).replace(**overrides)
        self.resolve_settings()  # fail now, not at the first click, on settings this model cannot take
        self._rgb: Optional[np.ndarray] = None
        self._guide: Optional[ImageGuide] = None
        self._latents: dict[tuple[int, int], torch.Tensor] = {}
        self._image_timings: dict[str, float] = {}
        self.baselines = BaselineCache()  # the relevance baseline's outputs, by image latents and settings
        self.latent_cache: Optional[LatentCache] = None  # a disk cache of image latents, when set

    @classmethod
    def from_pretrained(
        cls,
        model: str = DEFAULT_MODEL,
        device: Union[str, torch.device] = "auto",
        dtype: Union[str, torch.dtype] = "auto",
        local_files_only: Optional[bool] = None,
        allow_pickle: bool = False,
        **settings: Any,
    ) -> "EditSegmenter":
        """Load a hub id, cached id or local diffusers folder (see :func:`load_editing_model`);
        weights from safetensors files only unless ``allow_pickle=True``."""
        check_names(settings)
        SegmentationSettings().replace(**settings)  # bad values fail before the weights load
        return cls(load_editing_model(model, device, dtype, local_files_only, allow_pickle), **settings)

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def image_shape(self) -> Optional[tuple[int, int]]:
        return None if self._rgb is None else self._rgb.shape[:2]

    def resolve_settings(self, **overrides: Any) -> SegmentationSettings:
        """The settings a call would use: defaults, then overrides, with every "auto" resolved."""
        return resolve_propagation(
            self.model.resolve_timestep(self.layout.resolve(self.settings.replace(**overrides))))

    # -- steps 1-2: image --------------------------------------------------------------
    @_serialised
    def set_image(self, image: np.ndarray, latents: Optional[dict] = None) -> None:
        """Take an H×W, H×W×3 or H×W×4 image and encode it once for every later expression.

        Integer images are scaled by their data (docs/method.md, step 1). An image too large
        for the free memory is refused before its float copy is made. ``latents``: what
        :meth:`image_latents` gave for this same image before (a caller's cache keyed on the
        image's content, as the napari widget keeps); no VAE pass then, and the relevance
        baseline a forward ran on those latents is reused.
        """
        self._rgb, self._guide, self._latents = None, None, {}  # a refused image leaves no stale one behind
        self._image_timings = {"encode_image": 0.0}  # given latents: no encode runs (not the last image's time)
        image = np.asarray(image)
        settings = self.resolve_settings()
        if image.ndim in (2, 3) and min(image.shape[:2]) > 0:
            check_memory([vae_needs(self.model, self._model_size(settings, image.shape[:2]), settings.resolution)],
                         self.device, image_needs(*image.shape[:2]))
        self._rgb = to_rgb_float(image)
        self._guide = ImageGuide(self._rgb)
        if latents is not None:
            self._latents = latents
        self._image_latents(settings)

    def image_latents(self) -> dict:
        """The set image's VAE latents by model input size (small: 4×h/8×w/8 each), for set_image(latents=)."""
        return self._latents

    def _require_image(self) -> np.ndarray:
        if self._rgb is None:
            raise ValueError("no image is set: call set_image(image) first")
        return self._rgb

    @staticmethod
    def _model_size(settings: SegmentationSettings, shape: Sequence[int]) -> tuple[int, int]:
        return model_size(*shape[:2], settings.resolution, settings.size_multiple, settings.keep_aspect)

    def _image_latents(self, settings: SegmentationSettings) -> torch.Tensor:
        size = self._model_size(settings, self._require_image().shape)
        if size not in self._latents:
            start = time.perf_counter()
            self._latents[size] = self.encode_picture(self._rgb, size)
            self._image_timings = {"encode_image": time.perf_counter() - start}
        return self._latents[size]

    def encode_picture(self, rgb: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
        """A float RGB picture's latents at model input ``size``, from :attr:`latent_cache` when it has them."""
        return cached_latents(self.latent_cache, self.model, self._encode, rgb, size)

    def _encode(self, images: Sequence[np.ndarray], size: tuple[int, int]) -> torch.Tensor:
        """float RGB images → the latents the model conditions on at the model input ``size``, in one batch."""
        x = torch.cat([to_model_input(rgb, size) for rgb in images]).to(self.device, self.model.dtype)
        with torch.inference_mode(), self.model.compute():
            return self.model.encode_images(x)

    # -- steps 3-4: instruction and the one denoiser forward ---------------------------
    @_serialised
    def forward(self, expressions: Sequence[str], early_exit: bool = True, **overrides: Any) -> ForwardResult:
        """One batched denoiser forward for ``expressions`` on the set image, capturing its maps.

        ``early_exit=False`` runs the whole denoiser and returns its noise prediction, which
        equals the first denoiser call of the model's diffusers pipeline (guidance off).
        A relevance prior (``prior_source`` relevance or fused) compares with the baseline text's
        rows (one per noise draw), run in a forward of their own once per image and forward settings
        and kept for the next expression: a second expression runs its own rows only, and gets the
        same result bit for bit as if the baseline had run beside it. With ``relevance_from="noise"``
        the whole denoiser runs.
        """
        settings = self.resolve_settings(**overrides)
        return self._forward(_expression_list(expressions), settings, early_exit, relevance=True)

    def _forward(self, expressions: Sequence[Any], settings: SegmentationSettings, early_exit: bool,
                 relevance: bool) -> ForwardResult:
        """:meth:`forward` with resolved settings; ``relevance=False``: no relevance even if the source reads it."""
        plan = self.layout.plan(settings)
        instructions = _instructions(self.model, expressions, settings)
        baseline = relevance_baseline(settings) if relevance else None
        shape = self._require_image().shape[:2]
        size = self._model_size(settings, shape)
        key = (baseline, plan, tuple(getattr(settings, name) for name in FORWARD_SETTINGS if name != "decoys"))
        cached = None if baseline is None or size not in self._latents else self.baselines.get(self._latents[size], key)
        decoys = _decoy_rows(self.model, instructions, settings, baseline)
        rows = len(instructions) + len(decoys) + (baseline is not None and cached is None)
        self._check_memory(settings, plan, size, rows * settings.noise_samples, len(instructions),
                           image_needs(*shape, len(instructions)), encodes=int(size not in self._latents))
        latents = self._image_latents(settings)
        result = run_forward(self.model, settings, plan, [Rows(instructions, latents, cached, decoys)], early_exit,
                             baseline)[0]
        if baseline is not None and cached is None:  # kept for the next expression on these latents
            self.baselines.put(latents, key, result.baseline)
        return result

    def _check_memory(self, settings: SegmentationSettings, plan: CapturePlan, size: tuple[int, int], rows: int,
                      expressions: int, host: list, encodes: int) -> None:
        """Refuse a forward of ``rows`` at model input ``size`` (after ``encodes`` VAE encodes) whose
        memory estimate exceeds what is free, before anything large exists; ``host``: the
        full-size maps of the images (:func:`image_needs`)."""
        needs = self.model.memory_needs(settings, plan, size, rows, expressions)
        needs += [vae_needs(self.model, size, settings.resolution)] * encodes
        check_memory(needs, self.device, host)

    # -- steps 5-7 --------------------------------------------------------------------
    def segment(self, expression: str, box: Optional[Sequence[float]] = None, prior: Optional[Any] = None,
                **overrides: Any) -> Segmentation:
        """Segment what ``expression`` names in the set image; ``overrides`` change settings.

        ``box``: (row0, col0, row1, col1) pixels of the image, half-open; the prior and the
        mask are confined to it (see :mod:`napari_editseg.core.prompts`). ``prior``: a map of where
        the object is, in place of the one the forward gives (H×W at the image's size or any 2-D
        grid, values in [0, 1]; :func:`~napari_editseg.core.stages.fit_prior`): the expression still
        shapes the features, the forward runs no relevance row, and the confidence is 1.
        """
        return self.segment_batch([expression], box=box, prior=prior, **overrides)[0]

    @_serialised
    def segment_batch(self, expressions: Sequence[str], box: Optional[Sequence[float]] = None,
                      prior: Optional[Any] = None, **overrides: Any) -> list[Segmentation]:
        """Several expressions on the set image in ONE batched denoiser forward (one ``box`` and
        ``prior`` for all, as :meth:`segment` takes them)."""
        expressions = _expression_list(expressions)
        box = None if box is None or self.image_shape is None else check_box(box, self.image_shape)
        settings = self.resolve_settings(**overrides)
        if prior is None and self._rgb is not None and tiling_applies(settings, self.image_shape):  # large: tiles
            return [segment_tiled(self, ImageSource(self._rgb, (0.0, 1.0)), e, box, **overrides).as_segmentation()
                    for e in expressions]
        forward = self._forward(expressions, settings, True, relevance=prior is None)
        return self._segment_forward(forward, self.image_shape, self._guide, self._image_timings, box, prior)

    @_serialised
    def segment_images(self, images: Sequence[np.ndarray], expressions: Sequence[Sequence[str]],
                       **overrides: Any) -> list[list[Segmentation]]:
        """Several images, each with its own expressions, through ONE batched VAE encode and ONE
        batched denoiser forward for all images the model sees at one size (one per size otherwise).

        ``expressions[j]`` are image ``j``'s expressions; returns their segmentations per image.
        The same, up to float rounding in the larger batch, as ``set_image`` + ``segment_batch``
        on each image in turn (tested); the image set with :meth:`set_image` is left as it was.
        """
        images, expressions = list(images), list(expressions)
        if not images or len(images) != len(expressions):
            raise ValueError(f"give one list of expressions per image: {len(images)} image(s), "
                             f"{len(expressions)} list(s) of expressions")
        settings = self.resolve_settings(**overrides)
        plan, baseline = self.layout.plan(settings), relevance_baseline(settings)
        prepared = [(to_rgb_float(image), _instructions(self.model, _expression_list(texts), settings))
                    for image, texts in zip(images, expressions)]
        by_size: dict[tuple[int, int], list[int]] = {}
        for j, (rgb, _) in enumerate(prepared):
            by_size.setdefault(self._model_size(settings, rgb.shape), []).append(j)
        results: list[list[Segmentation]] = [[] for _ in prepared]
        for size, members in by_size.items():
            decoys = {j: _decoy_rows(self.model, prepared[j][1], settings, baseline) for j in members}
            count = sum(len(prepared[j][1]) for j in members)
            rows = (count + sum(map(len, decoys.values())) + len(members) * (baseline is not None)) \
                * settings.noise_samples
            host = [n for j in members for n in image_needs(*prepared[j][0].shape[:2], len(prepared[j][1]))]
            self._check_memory(settings, plan, size, rows, count, host, encodes=len(members))
            start = time.perf_counter()
            latents = self._encode([prepared[j][0] for j in members], size)
            encode = {"encode_image": (time.perf_counter() - start) / len(members)}  # per image
            pictures = [Rows(prepared[j][1], latents[k:k + 1], decoys=decoys[j]) for k, j in enumerate(members)]
            for j, forward in zip(members, run_forward(self.model, settings, plan, pictures, True, baseline)):
                rgb = prepared[j][0]
                results[j] = self._segment_forward(forward, rgb.shape[:2], ImageGuide(rgb), encode, None)
        return results

    @staticmethod
    def _segment_forward(forward: ForwardResult, shape: tuple[int, int], guide: ImageGuide, image_timings: dict,
                         box: Optional[tuple], prior: Optional[Any] = None) -> list[Segmentation]:
        """Steps 5-7 for each expression of one image's forward."""
        timings = {**image_timings, **forward.timings}
        return [segment_maps(forward.maps(i), forward.settings, shape, prior, box, guide, timings)
                for i in range(len(forward))]

    @_serialised
    def segment_points(
        self,
        positive: Sequence[Point] = (),
        negative: Sequence[Point] = (),
        box: Optional[Sequence[float]] = None,
        **overrides: Any,
    ) -> Segmentation:
        """Segment what clicks (and/or a box) mark, with no words: one denoiser forward.

        The forward runs the empty instruction (``prompts.NEUTRAL_INSTRUCTION``: the
        model's text-free condition), so the features describe the image alone. The prior
        is how much each place looks like the positive points (the box, without any),
        zero outside the box; the points then join the prototypes as in :meth:`refine`.
        ``positive`` / ``negative``: (row, col) pixels of the image.
        """
        positive, negative = _points("positive", positive), _points("negative", negative)
        if not positive and box is None:
            raise ValueError("give at least one positive point or a box to segment without words")
        box = None if box is None or self.image_shape is None else check_box(box, self.image_shape)
        # the words' prior is replaced, so no relevance rows are spent on it
        settings = self.resolve_settings(**{**overrides, "prior_source": "attention"})
        forward = self._forward([NEUTRAL_INSTRUCTION], settings, True, relevance=False)
        maps = forward.maps(0)
        features = pixel_features(maps.features, work_grid_of(maps.latent_grid, settings.work_resolution))
        prior = points_prior(features, positive, box, self.image_shape)
        return segment_maps(maps, settings, self.image_shape, prior, box, self._guide,
                            {**self._image_timings, **forward.timings}, positive, negative)

    @_serialised
    def refine(
        self,
        segmentation: Segmentation,
        positive: Sequence[Point] = (),
        negative: Sequence[Point] = (),
        prior: Optional[Any] = None,
        **overrides: Any,
    ) -> Segmentation:
        """Re-score from cached features: no denoiser forward.

        ``positive`` / ``negative`` are (row, col) pixels of the image; their features
        join the foreground / background prototypes, on top of earlier clicks. ``prior``: a new
        prior in place of the segmentation's (as :meth:`segment` takes it: H×W or any 2-D grid,
        values in [0, 1]; confined to the segmentation's box; confidence 1).
        ``overrides`` may change the settings of steps 6-7 only
        (``mask_threshold``, ``fg_quantile``, ``bg_quantile``, ``temperature``, …). The prior stays the
        segmentation's: ``instances=True`` here splits one object's prior, where :meth:`segment` with
        it would propagate the prior as instance mode does (``restart_share``, ``prior_pick``: auto).
        """
        check_names(overrides)
        if segmentation.tiles:
            return refine_tiled(segmentation, positive, negative, prior, overrides)
        for name in overrides:
            if name not in DISCRIMINATE_SETTINGS:
                raise ValueError(
                    f"setting {name!r} changes the denoiser forward or the prior: call segment() with it; "
                    f"refine() takes {', '.join(sorted(DISCRIMINATE_SETTINGS))}"
                )
        if prior is not None:
            grid, shape = segmentation.prior_work.shape, segmentation.mask.shape
            supplied = confine_prior(fit_prior(prior, grid), segmentation.box, shape)
            segmentation = replace(segmentation, prior_work=supplied.numpy(), confidence=1.0, peak_work=None)
        return delineate(
            segmentation, segmentation.settings.replace(**overrides),
            tuple(segmentation.positive) + _points("positive", positive),
            tuple(segmentation.negative) + _points("negative", negative),
        )


__all__ = ["CapturedMaps", "EditSegmenter", "ForwardResult", "Segmentation"]
