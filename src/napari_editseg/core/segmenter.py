"""EditSegmenter: set an image once, then segment what each expression names.

Reads top to bottom like a diffusers pipeline, one method per stage of
``docs/method.md``: encode image (cached) → encode instruction → one denoiser forward
with capture → prior → prototypes and scores → mask at the image's own size. Steps 1-4 are
asked of the loaded model's backbone (``core/backbones``); steps 5-7 read only what it captured.
"""

from __future__ import annotations

import functools
import math
import numbers
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Iterable, Optional, Sequence, TypeVar, Union

import numpy as np
import torch

from .budget import check_memory, image_needs, vae_needs
from .capture import AttentionStore
from .discriminate import Point, features_at, pixel_features, score, to_grid
from .edges import ImageGuide
from .image import model_size, resize, to_model_input, to_rgb_float
from .instruction import Instruction, baseline_text, build_instruction
from .layout import CapturePlan
from .mask import make_mask, to_image_size
from .model import DEFAULT_MODEL, EditingModel, load_editing_model
from .prior import combine_sources, expression_attention, peak_dominance, propagate
from .prompts import NEUTRAL_INSTRUCTION, Box, box_mask, box_prototypes, check_box, confine_prior, points_prior
from .relevance import relevance_map
from .settings import DISCRIMINATE_SETTINGS, SegmentationSettings, check_names


@dataclass
class Segmentation:
    """One expression's result. Arrays are numpy; maps are at the image's own size.

    ``features`` (D×h×w, unit vectors) and ``prior_work`` (h×w) are the work-grid
    inputs of the last stages, kept so :meth:`EditSegmenter.refine` needs no denoiser pass.
    """

    expression: str
    instruction: str
    truncated: bool
    mask: np.ndarray  # bool H×W
    scores: np.ndarray  # float32 H×W in [0, 1]: S, foreground probability
    prior: np.ndarray  # float32 H×W in [0, 1]: P, where the model looked
    settings: SegmentationSettings
    timings: dict[str, float]
    features: np.ndarray
    prior_work: np.ndarray
    fg_prototypes: np.ndarray
    bg_prototypes: np.ndarray
    positive: tuple[Point, ...] = ()
    negative: tuple[Point, ...] = ()
    confidence: float = 1.0  # in [0, 1]: does the expression point at one thing? (see ``found``)
    box: Optional[Box] = None  # (row0, col0, row1, col1) pixels the prior and mask were confined to
    guide: Optional[ImageGuide] = field(default=None, repr=False)  # the image, for edge_refine in refine()
    # the prototypes the prior alone gives, with the settings that chose them: a re-threshold or
    # a click reuses them instead of clustering the background again
    prior_prototypes: Optional[tuple] = field(default=None, repr=False, compare=False)

    @property
    def area(self) -> float:
        """Share of the image inside the mask."""
        return float(self.mask.mean())

    @property
    def found(self) -> bool:
        """False when ``confidence`` lies below the ``min_confidence`` setting: "nothing found"."""
        return self.confidence >= self.settings.min_confidence


@dataclass
class ForwardResult:
    """The captured maps of one batched denoiser forward, one row per instruction."""

    instructions: list[Instruction]
    settings: SegmentationSettings
    plan: CapturePlan
    latent_grid: tuple[int, int]
    store: AttentionStore
    noise_pred: Optional[torch.Tensor]
    timings: dict[str, float] = field(default_factory=dict)
    relevance: Optional[torch.Tensor] = None  # n×h×w on the latent grid, when the prior source needs it


def relevance_of_rows(outputs: Sequence[torch.Tensor], i: int, n: int, samples: int, grid: tuple[int, int]
                      ) -> torch.Tensor:
    """Expression ``i``'s relevance on ``grid``: its rows against the baseline rows (the last
    ``samples`` of the batch), per captured output (noise prediction or feature blocks), averaged."""
    maps = [resize(relevance_map(o[i * samples:(i + 1) * samples], o[n * samples:]), grid) for o in outputs]
    return torch.stack(maps).mean(dim=0)


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


class EditSegmenter:
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

    # -- settings ---------------------------------------------------------------------
    def resolve_settings(self, **overrides: Any) -> SegmentationSettings:
        """The settings a call would use: defaults, then overrides, with every "auto" resolved."""
        return self.model.resolve_timestep(self.layout.resolve(self.settings.replace(**overrides)))

    # -- step 1-2: image --------------------------------------------------------------
    @_serialised
    def set_image(self, image: np.ndarray, latents: Optional[dict] = None) -> None:
        """Take an H×W, H×W×3 or H×W×4 image and encode it once for every later expression.

        Integer images are scaled by their data (docs/method.md, step 1). An image too large
        for the free memory is refused before its float copy is made. ``latents``: what
        :meth:`image_latents` gave for this same image before (a caller's cache keyed on the
        image's content, as the napari widget keeps); no VAE pass then.
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
            self._latents[size] = self._encode([self._rgb], size)
            self._image_timings = {"encode_image": time.perf_counter() - start}
        return self._latents[size]

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
        A relevance prior (``prior_source`` relevance or fused) adds one baseline-text row per
        noise draw to the same batch; with ``relevance_from="noise"`` the whole denoiser runs.
        """
        expressions = _expression_list(expressions)
        settings = self.resolve_settings(**overrides)
        plan = self.layout.plan(settings)
        instructions, texts = self._instructions(expressions, settings)
        shape = self._require_image().shape[:2]
        size = self._model_size(settings, shape)
        self._check_memory(settings, plan, size, len(texts) * settings.noise_samples, len(instructions),
                           image_needs(*shape, len(instructions)), encodes=int(size not in self._latents))
        image_latents = self._image_latents(settings)
        return self._forward_blocks(settings, plan, [(instructions, texts, image_latents)], early_exit)[0]

    def _instructions(self, expressions: Sequence[Any], settings: SegmentationSettings
                      ) -> tuple[list[Instruction], list[str]]:
        """The instructions and the texts of their rows (plus the baseline text for a relevance prior)."""
        instructions = [
            e if isinstance(e, Instruction) else
            build_instruction(e, settings.instruction_template, self.model.tokenizer, self.model.max_tokens)
            for e in expressions
        ]
        if settings.token_norm == "contrast" and not instructions[0].template_positions:
            raise ValueError("token_norm='contrast' needs template words around '{}' in instruction_template")
        baseline = baseline_text(settings.instruction_template, settings.relevance_baseline)
        return instructions, [i.text for i in instructions] + ([baseline] if settings.prior_source != "attention"
                                                                  else [])

    def _forward_blocks(self, settings: SegmentationSettings, plan: CapturePlan,
                        blocks: list[tuple[list[Instruction], list[str], torch.Tensor]], early_exit: bool
                        ) -> list[ForwardResult]:
        """ONE denoiser forward over several images' rows (each block: an image's instructions, its row
        texts and its latents, all of one size); the captured maps split back per image."""
        relevance_rows = settings.prior_source != "attention"
        whole_unet = relevance_rows and settings.relevance_from == "noise"
        samples = settings.noise_samples
        timings = {}
        with torch.inference_mode(), self.model.compute():
            start = time.perf_counter()
            text = self.model.encode_text([t for _, texts, _ in blocks for t in texts])
            timings["encode_text"] = time.perf_counter() - start

            start = time.perf_counter()
            noisy, images, t = [], [], None
            for _, texts, image_latents in blocks:
                latents, t = self.model.noisy_latents(settings, image_latents, len(texts))
                noisy.append(latents)
                images.append(image_latents.expand(len(latents), *image_latents.shape[1:]))
            noise_pred, store = self.model.forward(
                torch.cat(noisy), torch.cat(images), t,
                {name: v.repeat_interleave(samples, dim=0) for name, v in text.items()}, plan,
                early_exit and not whole_unet,
            )
            results, offset = [], 0
            for instructions, texts, image_latents in blocks:
                rows = slice(offset, offset + len(texts) * samples)
                offset = rows.stop
                block_store = store.take_rows(rows) if len(blocks) > 1 else store
                block_noise = None if noise_pred is None else noise_pred[rows]
                n, latent_grid = len(instructions), tuple(image_latents.shape[-2:])
                relevance = None
                if relevance_rows:
                    outputs = [block_noise] if whole_unet else [block_store.features[b] for b in plan.feature_modules]
                    relevance = torch.stack([relevance_of_rows(outputs, i, n, samples, latent_grid) for i in range(n)])
                    block_store = block_store.take_rows(slice(0, n * samples))  # the baseline rows have served
                    block_noise = None if block_noise is None else block_noise[:n * samples]
                results.append(ForwardResult(instructions, settings, plan, latent_grid, block_store, block_noise,
                                             timings, relevance))
            timings["unet"] = time.perf_counter() - start
        return results

    def _check_memory(self, settings: SegmentationSettings, plan: CapturePlan, size: tuple[int, int], rows: int,
                      expressions: int, host: list, encodes: int) -> None:
        """Refuse a forward of ``rows`` at model input ``size`` (after ``encodes`` VAE encodes) whose
        memory estimate exceeds what is free, before anything large exists; ``host``: the
        full-size maps of the images (:func:`image_needs`)."""
        needs = self.model.memory_needs(settings, plan, size, rows, expressions)
        needs += [vae_needs(self.model, size, settings.resolution)] * encodes
        check_memory(needs, self.device, host)

    # -- steps 5-7 --------------------------------------------------------------------
    def segment(self, expression: str, box: Optional[Sequence[float]] = None, **overrides: Any) -> Segmentation:
        """Segment what ``expression`` names in the set image; ``overrides`` change settings.

        ``box``: (row0, col0, row1, col1) pixels of the image, half-open; the prior and the
        mask are confined to it (see :mod:`napari_editseg.core.prompts`).
        """
        return self.segment_batch([expression], box=box, **overrides)[0]

    @_serialised
    def segment_batch(
        self, expressions: Sequence[str], box: Optional[Sequence[float]] = None, **overrides: Any
    ) -> list[Segmentation]:
        """Several expressions on the set image in ONE batched denoiser forward (one ``box`` for all)."""
        expressions = _expression_list(expressions)
        box = None if box is None or self.image_shape is None else check_box(box, self.image_shape)
        forward = self.forward(expressions, **overrides)
        return self._segment_forward(forward, self.image_shape, self._guide, self._image_timings, box)

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
        plan = self.layout.plan(settings)
        prepared = [(to_rgb_float(image), *self._instructions(_expression_list(texts), settings))
                    for image, texts in zip(images, expressions)]
        by_size: dict[tuple[int, int], list[int]] = {}
        for j, (rgb, _, _) in enumerate(prepared):
            by_size.setdefault(self._model_size(settings, rgb.shape), []).append(j)
        results: list[list[Segmentation]] = [[] for _ in prepared]
        for size, members in by_size.items():
            rows = sum(len(prepared[j][2]) for j in members) * settings.noise_samples
            count = sum(len(prepared[j][1]) for j in members)
            host = [n for j in members for n in image_needs(*prepared[j][0].shape[:2], len(prepared[j][1]))]
            self._check_memory(settings, plan, size, rows, count, host, encodes=len(members))
            start = time.perf_counter()
            latents = self._encode([prepared[j][0] for j in members], size)
            encode = {"encode_image": (time.perf_counter() - start) / len(members)}  # per image
            blocks = [(prepared[j][1], prepared[j][2], latents[k:k + 1]) for k, j in enumerate(members)]
            for j, forward in zip(members, self._forward_blocks(settings, plan, blocks, early_exit=True)):
                rgb = prepared[j][0]
                results[j] = self._segment_forward(forward, rgb.shape[:2], ImageGuide(rgb), encode, None)
        return results

    def _segment_forward(self, forward: ForwardResult, image_shape: tuple[int, int], guide: ImageGuide,
                         image_timings: dict, box: Optional[Box]) -> list[Segmentation]:
        """Steps 5-7 for each expression of one image's forward."""
        settings, plan, store = forward.settings, forward.plan, forward.store
        expressions = forward.instructions
        samples = settings.noise_samples
        h, w = forward.latent_grid
        latent_side = max(h, w)
        work_grid = (max(1, round(h * settings.work_resolution / latent_side)),
                     max(1, round(w * settings.work_resolution / latent_side)))
        affinity_grid = (h >> plan.affinity_level, w >> plan.affinity_level)
        grids = [(h >> level, w >> level) for level in plan.cross_levels]

        def per_expression(t: torch.Tensor) -> torch.Tensor:
            # rows are expression-major, noise_samples per expression: average the draws
            return t.reshape(len(expressions), samples, *t.shape[1:]).mean(dim=1)

        cross = [per_expression(store.cross[name]) for name in plan.cross_layers]
        affinity = per_expression(store.affinity)
        blocks = [per_expression(store.features[name]) for name in plan.feature_modules]
        results = []
        for i, instruction in enumerate(forward.instructions):
            start = time.perf_counter()
            attention = None if settings.prior_source == "relevance" else expression_attention(
                [c[i] for c in cross], grids, instruction.token_positions, settings.token_reduce, work_grid,
                instruction.word_positions, settings.token_norm, settings.token_scale,
            )
            relevance = None if forward.relevance is None else resize(forward.relevance[i], work_grid)
            p0 = confine_prior(combine_sources(attention, relevance, settings.prior_source), box, image_shape)
            prior_work = confine_prior(propagate(p0, affinity[i], affinity_grid, settings.propagation_steps), box,
                                       image_shape)
            prior_time = time.perf_counter() - start
            features = pixel_features([b[i] for b in blocks], work_grid)
            timings = {**image_timings, **forward.timings, "prior": prior_time}
            base = Segmentation(
                expression=instruction.expression, instruction=instruction.encoded_text,
                truncated=instruction.truncated,
                mask=np.zeros(image_shape, bool), scores=np.zeros(image_shape, np.float32),
                prior=to_image_size(prior_work, image_shape), settings=settings, timings=timings,
                features=features.cpu().numpy(), prior_work=prior_work.cpu().numpy(),
                fg_prototypes=np.zeros((0, features.shape[0]), np.float32),
                bg_prototypes=np.zeros((0, features.shape[0]), np.float32), confidence=peak_dominance(p0),
                guide=guide, box=box,
            )
            results.append(self._discriminate(base, settings, (), ()))
        return results

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
        # the words' prior is replaced below, so no relevance rows are spent on it
        base = self.segment_batch([NEUTRAL_INSTRUCTION], box=box, **{**overrides, "prior_source": "attention"})[0]
        prior_work = points_prior(torch.from_numpy(base.features), positive, base.box, self.image_shape)
        base = replace(base, prior_work=prior_work.numpy(), prior=to_image_size(prior_work, self.image_shape),
                       confidence=1.0, prior_prototypes=None)
        return self._discriminate(base, base.settings, positive, negative)

    @_serialised
    def refine(
        self,
        segmentation: Segmentation,
        positive: Sequence[Point] = (),
        negative: Sequence[Point] = (),
        **overrides: Any,
    ) -> Segmentation:
        """Re-score from cached features: no denoiser forward.

        ``positive`` / ``negative`` are (row, col) pixels of the image; their features
        join the foreground / background prototypes, on top of earlier clicks.
        ``overrides`` may change the settings of steps 6-7 only
        (``mask_threshold``, ``fg_quantile``, ``bg_quantile``, ``temperature``, …).
        """
        check_names(overrides)
        for name in overrides:
            if name not in DISCRIMINATE_SETTINGS:
                raise ValueError(
                    f"setting {name!r} changes the denoiser forward or the prior: call segment() with it; "
                    f"refine() takes {', '.join(sorted(DISCRIMINATE_SETTINGS))}"
                )
        settings = segmentation.settings.replace(**overrides)
        return self._discriminate(
            segmentation, settings,
            tuple(segmentation.positive) + _points("positive", positive),
            tuple(segmentation.negative) + _points("negative", negative),
        )

    def _discriminate(
        self,
        base: Segmentation,
        settings: SegmentationSettings,
        positive: tuple[Point, ...],
        negative: tuple[Point, ...],
    ) -> Segmentation:
        """Steps 6-7 on a segmentation's cached work-grid features and prior."""
        start = time.perf_counter()
        features = torch.from_numpy(base.features)
        prior_work = torch.from_numpy(base.prior_work)
        image_shape = base.mask.shape
        grid = tuple(prior_work.shape)
        key = (settings.fg_select, settings.fg_quantile, settings.bg_quantile, settings.bg_prototypes, settings.seed,
               hash(base.prior_work.tobytes()), id(base.features), base.box)
        if base.prior_prototypes is not None and base.prior_prototypes[0] == key:
            fg, bg = (torch.from_numpy(p) for p in base.prior_prototypes[1:])
        else:
            fg, bg = box_prototypes(features, prior_work, base.box, image_shape, settings)
        from_prior = (key, fg.numpy(), bg.numpy())
        fg = torch.cat([fg, features_at(features, to_grid(positive, image_shape, grid))])
        bg = torch.cat([bg, features_at(features, to_grid(negative, image_shape, grid))])
        scores_work = score(features, fg, bg, settings.temperature)
        middle = time.perf_counter()
        scores = to_image_size(scores_work, image_shape)
        if settings.edge_refine != "none":
            if base.guide is None:
                raise ValueError("edge_refine needs the image: refine a Segmentation that segment() returned")
            cell = max(image_shape[0] / grid[0], image_shape[1] / grid[1])  # image pixels per work-grid cell
            scores = base.guide.refine(scores, settings.edge_refine, cell, settings.edge_radius, settings.edge_eps)
        edges = time.perf_counter()
        mask = make_mask(scores, base.prior, settings.mask_threshold, settings.keep, settings.fill_holes)
        if base.box is not None:
            mask &= box_mask(base.box, image_shape)
        end = time.perf_counter()
        timings = {**base.timings, "discriminate": middle - start, "edges": edges - middle, "mask": end - edges}
        return replace(
            base, mask=mask, scores=scores, settings=settings, timings=timings,
            fg_prototypes=fg.numpy(), bg_prototypes=bg.numpy(), positive=positive, negative=negative,
            prior_prototypes=from_prior,
        )
