"""Steps 3-4 as data: the rows of one batched denoiser forward, what it captured, and each
expression's share of it.

:func:`run_forward` puts the instruction rows of one or several images through ONE forward of the
loaded model's family, with the relevance prior's baseline-text rows, and splits what it captured
back per image
(:class:`ForwardResult`). :meth:`ForwardResult.maps` gives one expression's maps with the noise
draws averaged (:class:`CapturedMaps`): what steps 5-7 (:mod:`napari_editseg.core.stages`) read,
whether they came from a whole image, a tile or a slice.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch

from .backbones.base import EditingModel
from .capture import AttentionStore
from .image import resize
from .instruction import Instruction
from .layout import CapturePlan
from .relevance import relevance_map
from .settings import SegmentationSettings

Grid = tuple[int, int]


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


@dataclass
class ForwardResult:
    """The captured maps of one batched denoiser forward on one picture, one row per instruction and
    noise draw (expression-major). Read an expression's maps with :meth:`maps`, not by indexing the store.
    """

    instructions: list[Instruction]
    settings: SegmentationSettings
    plan: CapturePlan
    latent_grid: Grid
    store: AttentionStore
    noise_pred: Optional[torch.Tensor]
    timings: dict[str, float] = field(default_factory=dict)
    relevance: Optional[torch.Tensor] = None  # n×h×w on the latent grid, when the prior source needs it

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
        )


@dataclass
class Rows:
    """One picture's part of a batched forward: its instructions and latents (1×C×h×w)."""

    instructions: list[Instruction]
    latents: torch.Tensor


def relevance_of(outputs: Sequence[torch.Tensor], baseline: Sequence[torch.Tensor], i: int, samples: int,
                 grid: Grid) -> torch.Tensor:
    """Expression ``i``'s relevance on ``grid``: its rows of each captured output (noise prediction or
    feature blocks) against the baseline's rows of the same output, averaged over the outputs."""
    maps = [resize(relevance_map(o[i * samples:(i + 1) * samples], b), grid) for o, b in zip(outputs, baseline)]
    return torch.stack(maps).mean(dim=0)


def run_forward(model: EditingModel, settings: SegmentationSettings, plan: CapturePlan, pictures: list[Rows],
                early_exit: bool, baseline_text: Optional[str]) -> list[ForwardResult]:
    """ONE denoiser forward over several pictures' rows (all of one model input size): each picture's
    instructions, then its relevance baseline row (``baseline_text``; None when the prior source reads
    no relevance); the captured maps split back per picture. Relevance read from the noise prediction
    runs the whole denoiser."""
    whole = baseline_text is not None and settings.relevance_from == "noise"
    samples = settings.noise_samples
    texts = [[i.text for i in p.instructions] + ([baseline_text] if baseline_text is not None else [])
             for p in pictures]
    timings: dict[str, float] = {}
    with torch.inference_mode(), model.compute():
        start = time.perf_counter()
        text = model.encode_text([t for picture in texts for t in picture])
        timings["encode_text"] = time.perf_counter() - start

        start = time.perf_counter()
        noisy, images, t = [], [], None
        for p, picture in zip(pictures, texts):
            latents, t = model.noisy_latents(settings, p.latents, len(picture))
            noisy.append(latents)
            images.append(p.latents.expand(len(latents), *p.latents.shape[1:]))
        noise_pred, store = model.forward(
            torch.cat(noisy), torch.cat(images), t,
            {name: v.repeat_interleave(samples, dim=0) for name, v in text.items()}, plan, early_exit and not whole,
        )
        results, offset = [], 0
        for p, picture in zip(pictures, texts):
            taken = slice(offset, offset + len(picture) * samples)
            offset = taken.stop
            part = store.take_rows(taken) if len(pictures) > 1 else store
            noise = None if noise_pred is None else noise_pred[taken]
            n, grid = len(p.instructions), tuple(p.latents.shape[-2:])
            relevance = None
            if baseline_text is not None:
                outputs = [noise] if whole else [part.features[b] for b in plan.feature_modules]
                baseline = [o[n * samples:] for o in outputs]
                relevance = torch.stack([relevance_of(outputs, baseline, i, samples, grid) for i in range(n)])
                part = part.take_rows(slice(0, n * samples))  # the baseline rows have served
                noise = None if noise is None else noise[:n * samples]
            results.append(ForwardResult(p.instructions, settings, plan, grid, part, noise, timings, relevance))
        timings["denoiser"] = time.perf_counter() - start
    return results
