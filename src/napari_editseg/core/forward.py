"""Steps 3-4 as data: the rows of one batched denoiser forward, what it captured, and each
expression's share of it.

:func:`run_forward` puts the instruction rows of one or several images through ONE forward of the
loaded model's family (and the relevance prior's baseline-text rows through one of their own, unless
a cached copy of their outputs is given) and splits what it captured back per image
(:class:`ForwardResult`). :meth:`ForwardResult.maps` gives one expression's maps with the noise
draws averaged (:class:`CapturedMaps`): what steps 5-7 (:mod:`napari_editseg.core.stages`) read,
whether they came from a whole image, a tile or a slice.
"""

from __future__ import annotations

import functools
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch

from .backbones.base import EditingModel
from .capture import AttentionStore
from .image import resize
from .instruction import Instruction, baseline_text
from .layout import CapturePlan
from .prior import PRIOR_SOURCES
from .relevance import relevance_map
from .settings import SegmentationSettings

Grid = tuple[int, int]
BASELINE_CACHE_BYTES = 256 * 2**20  # relevance baselines kept (about 16 images at 512 px, float32 features)


@dataclass(frozen=True)
class CapturedMaps:
    """What one forward captured for ONE expression on one picture (an image, a tile, a slice),
    noise draws averaged, as float32 tensors: everything steps 5-7 read.

    ``cross[k]`` (N×T, N = h·w of ``cross_grids[k]``): image→text attention of layer
    ``cross_layers[k]``, averaged over heads; ``affinity`` (N×N on ``affinity_grid``, rows sum to 1):
    image→image attention averaged over the captured layers; ``features[k]`` (C×h×w): the output of
    feature block k; ``relevance`` (h×w on ``latent_grid``, in [0, 1]): where the instruction changes
    the forward against the baseline text, when the forward ran or reused that row.
    """

    instruction: Instruction
    latent_grid: Grid
    cross_layers: tuple[str, ...]
    cross: tuple[torch.Tensor, ...]
    cross_grids: tuple[Grid, ...]
    affinity: torch.Tensor
    affinity_grid: Grid
    features: tuple[torch.Tensor, ...]
    relevance: Optional[torch.Tensor] = None
    decoy_rank: Optional[float] = None  # share of the decoy rows whose effect is below this expression's


@dataclass
class ForwardResult:
    """The captured maps of one batched denoiser forward on one picture, one row per instruction and
    noise draw (expression-major). Read an expression's maps with :meth:`maps`, not by indexing the store.

    ``baseline``: the relevance baseline's outputs (noise draws × the outputs the relevance reads),
    which a later forward on the same latents may reuse instead of running the row again.
    """

    instructions: list[Instruction]
    settings: SegmentationSettings
    plan: CapturePlan
    latent_grid: Grid
    store: AttentionStore
    noise_pred: Optional[torch.Tensor]
    timings: dict[str, float] = field(default_factory=dict)
    relevance: Optional[torch.Tensor] = None  # n×h×w on the latent grid, when the prior source needs it
    baseline: Optional[tuple[torch.Tensor, ...]] = field(default=None, repr=False)
    decoy_rank: Optional[torch.Tensor] = None  # (n,) when decoy rows ran: see :func:`decoy_ranks`

    def __len__(self) -> int:
        return len(self.instructions)

    @functools.cached_property
    def _averaged(self) -> tuple[list[torch.Tensor], torch.Tensor, list[torch.Tensor]]:
        """The store's maps per expression (n×…), noise draws averaged; computed once per result."""
        n, samples = len(self.instructions), self.settings.noise_samples

        def per_expression(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(n, samples, *t.shape[1:]).mean(dim=1)

        return ([per_expression(self.store.cross[name]) for name in self.plan.cross_layers],
                per_expression(self.store.affinity),
                [per_expression(self.store.features[name]) for name in self.plan.feature_modules])

    def maps(self, i: int) -> CapturedMaps:
        """Expression ``i``'s maps (its position in :attr:`instructions`), noise draws averaged."""
        cross, affinity, features = self._averaged
        h, w = self.latent_grid
        return CapturedMaps(
            instruction=self.instructions[i], latent_grid=self.latent_grid, cross_layers=self.plan.cross_layers,
            cross=tuple(c[i] for c in cross), cross_grids=tuple((h >> lv, w >> lv) for lv in self.plan.cross_levels),
            affinity=affinity[i], affinity_grid=(h >> self.plan.affinity_level, w >> self.plan.affinity_level),
            features=tuple(b[i] for b in features), relevance=None if self.relevance is None else self.relevance[i],
            decoy_rank=None if self.decoy_rank is None else float(self.decoy_rank[i]),
        )


@dataclass
class Rows:
    """One picture's part of a batched forward: its instructions and latents (1×C×h×w), and the
    relevance baseline's outputs when a copy is cached (then its row does not run again;
    :func:`run_forward` fills them in where it ran the row). ``decoys``: instructions run beside
    them only to rank the instructions' effects among theirs (the ``decoys`` setting)."""

    instructions: list[Instruction]
    latents: torch.Tensor
    baseline: Optional[tuple[torch.Tensor, ...]] = None
    decoys: list[Instruction] = field(default_factory=list)


class BaselineCache:
    """The relevance baseline's outputs by the image latents they ran on (the tensor itself: the same
    image at the same size) and by what else they depend on (``key``); the least recently used are
    dropped beyond ``budget`` bytes, the newest always kept. Entries hold their latents, so no other
    tensor can take their identity."""

    def __init__(self, budget: int = BASELINE_CACHE_BYTES):
        self.budget = budget
        self._kept: OrderedDict = OrderedDict()

    def get(self, latents: torch.Tensor, key: tuple) -> Optional[tuple[torch.Tensor, ...]]:
        entry = self._kept.get((id(latents), key))
        if entry is None or entry[0] is not latents:
            return None
        self._kept.move_to_end((id(latents), key))
        return entry[1]

    def put(self, latents: torch.Tensor, key: tuple, outputs: Sequence[torch.Tensor]) -> None:
        self._kept[(id(latents), key)] = (latents, tuple(t.clone() for t in outputs))  # not views of a batch
        self._kept.move_to_end((id(latents), key))
        while len(self._kept) > 1 and self.nbytes > self.budget:
            self._kept.popitem(last=False)

    @property
    def nbytes(self) -> int:
        return sum(t.nbytes for _, outputs in self._kept.values() for t in outputs)

    def __len__(self) -> int:
        return len(self._kept)


def relevance_baseline(settings: SegmentationSettings) -> Optional[str]:
    """The text the relevance prior and the decoys' ranking compare the instruction with; None when
    neither is asked for."""
    if not PRIOR_SOURCES[settings.prior_source].relevance and not settings.decoys:
        return None
    return baseline_text(settings.instruction_template, settings.relevance_baseline)


def relevance_of(outputs: Sequence[torch.Tensor], baseline: Sequence[torch.Tensor], i: int, samples: int,
                 grid: Grid) -> torch.Tensor:
    """Expression ``i``'s relevance on ``grid``: its rows of each captured output (noise prediction or
    feature blocks) against the baseline's rows of the same output, averaged over the outputs."""
    maps = [resize(relevance_map(o[i * samples:(i + 1) * samples], b), grid) for o, b in zip(outputs, baseline)]
    return torch.stack(maps).mean(dim=0)


def effect_sizes(outputs: Sequence[torch.Tensor], baseline: Sequence[torch.Tensor], rows: int, samples: int
                 ) -> torch.Tensor:
    """rows × outputs: each row's raw effect on each output against the baseline text (|difference|
    summed over channels, averaged over positions and noise draws); unscaled, so rows compare."""
    return torch.stack([
        torch.stack([(o[r * samples:(r + 1) * samples].float() - b.float()).abs().sum(dim=1).mean()
                     for o, b in zip(outputs, baseline)])
        for r in range(rows)])


def decoy_ranks(effects: torch.Tensor, instructions: Sequence[Instruction], decoys: Sequence[Instruction]
                ) -> torch.Tensor:
    """(n,): for each instruction (the first n rows of ``effects``; the decoys' rows follow), the
    share of the decoys of as many words whose effect is below its own (ties half), averaged over
    the outputs. A rank, not a size: no scale to calibrate per model."""
    n = len(instructions)
    ranks = []
    for i, instruction in enumerate(instructions):
        words = len(instruction.expression.split())
        rows = [n + j for j, d in enumerate(decoys) if len(d.expression.split()) == words]
        own, others = effects[i], effects[rows]
        ranks.append(((others < own).float() + 0.5 * (others == own).float()).mean())
    return torch.stack(ranks)


def run_forward(model: EditingModel, settings: SegmentationSettings, plan: CapturePlan, pictures: list[Rows],
                early_exit: bool, baseline_text: Optional[str]) -> list[ForwardResult]:
    """ONE denoiser forward over several pictures' instruction rows (all of one model input size); the
    captured maps split back per picture.

    ``baseline_text``: the relevance prior's baseline, None when the prior source reads no relevance.
    Its rows run in a forward of their own (only for pictures without a cached copy), so that neither
    batch depends on the other: an expression gives the same result bit for bit whether the baseline
    ran beside it or was cached. Relevance read from the noise prediction runs the whole denoiser.
    """
    whole = baseline_text is not None and settings.relevance_from == "noise"
    samples, timings = settings.noise_samples, {"encode_text": 0.0, "denoiser": 0.0}
    with torch.inference_mode(), model.compute():
        texts = [([i.text for i in [*p.instructions, *p.decoys]], p.latents) for p in pictures]
        noise, store = _denoise(model, settings, plan, texts, early_exit and not whole, timings)
        missing = [p for p in pictures if baseline_text is not None and p.baseline is None]
        if missing:
            base_noise, base_store = _denoise(model, settings, plan, [([baseline_text], p.latents) for p in missing],
                                              early_exit and not whole, timings)
            for k, p in enumerate(missing):
                taken = slice(k * samples, (k + 1) * samples)
                p.baseline = tuple(_outputs(base_noise, base_store, plan, whole, taken))
        results, offset = [], 0
        for p in pictures:
            n = len(p.instructions)
            taken, every = slice(offset, offset + n * samples), slice(offset, offset + (n + len(p.decoys)) * samples)
            offset = every.stop
            part = store.take_rows(taken) if len(pictures) > 1 or p.decoys else store
            part_noise = None if noise is None else noise[taken]
            relevance = ranks = None
            if baseline_text is not None:
                outputs = _outputs(part_noise, part, plan, whole, slice(None))
                grid = tuple(p.latents.shape[-2:])
                relevance = torch.stack([relevance_of(outputs, p.baseline, i, samples, grid) for i in range(n)])
            if baseline_text is not None and p.decoys:
                effects = effect_sizes(_outputs(noise, store, plan, whole, every), p.baseline,
                                       n + len(p.decoys), samples)
                ranks = decoy_ranks(effects, p.instructions, p.decoys)
            results.append(ForwardResult(p.instructions, settings, plan, tuple(p.latents.shape[-2:]), part,
                                         part_noise, timings, relevance, p.baseline, ranks))
    return results


def _outputs(noise: Optional[torch.Tensor], store: AttentionStore, plan: CapturePlan, whole: bool, rows: slice
             ) -> list[torch.Tensor]:
    """The outputs the relevance compares, at ``rows``: the noise prediction, or the feature blocks'."""
    return [noise[rows]] if whole else [store.features[b][rows] for b in plan.feature_modules]


def _denoise(model: EditingModel, settings: SegmentationSettings, plan: CapturePlan,
             pictures: list[tuple[list[str], torch.Tensor]], early_exit: bool, timings: dict
             ) -> tuple[Optional[torch.Tensor], AttentionStore]:
    """Encode the texts and run ONE capturing denoiser forward over every picture's rows (its texts ×
    ``noise_samples``, on its latents); the seconds are added to ``timings``."""
    start = time.perf_counter()
    text = model.encode_text([t for texts, _ in pictures for t in texts])
    middle = time.perf_counter()
    noisy, images, t = [], [], None
    for texts, latents in pictures:
        rows, t = model.noisy_latents(settings, latents, len(texts))
        noisy.append(rows)
        images.append(latents.expand(len(rows), *latents.shape[1:]))
    result = model.forward(torch.cat(noisy), torch.cat(images), t,
                           {name: v.repeat_interleave(settings.noise_samples, dim=0) for name, v in text.items()},
                           plan, early_exit)
    timings["encode_text"] += middle - start
    timings["denoiser"] += time.perf_counter() - middle
    return result
