"""Diffusion transformers with joint attention (MMDiT: FLUX.1, and by the same pieces Qwen-Image):
where things are, the "auto" settings, and how one forward's attention is recorded.

In joint attention the text tokens and the image tokens form ONE sequence
``[text (T), target (N), reference (N)]`` and every query attends to every key. Editors that
see the input image as tokens of its own (FLUX.1 Kontext, Qwen-Image-Edit) append the
*reference* image's tokens after the *target* (noisy) tokens. From one attention map the
segmenter reads two blocks for the chosen image tokens' queries: their probabilities over the
text keys (the prior: ``store.cross``) and over the same image's keys, renormalised (the
affinity). Everything lives on the token grid: the latent grid halved by the 2×2 patch packing.

What a family supplies is an attention processor that computes q and k exactly as its own
does and hands them to :func:`record_attention`; the layout, the plan, the hooks and the
restoring are shared (:func:`joint_capturing`).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Optional

import torch
from torch import nn

from ..capture import SELF_ATTENTION_BUDGET, AttentionStore, block_hooks
from ..layout import CapturePlan, snap
from ..settings import AUTO, SegmentationSettings


@dataclass(frozen=True)
class JointCapturePlan(CapturePlan):
    """A :class:`CapturePlan` that also says whose queries are read: ``target`` or ``reference``."""

    image_tokens: str = "reference"


@dataclass(frozen=True)
class JointTokens:
    """Lengths of the streams of one forward's joint sequence ``[text, target, reference]`` and
    the token grid of each image; ``read`` names the image whose queries are recorded."""

    text: int
    target: int
    reference: int
    grid: tuple[int, int]
    read: str

    @property
    def image_rows(self) -> slice:
        """The read image's rows in the image stream (the sequence without the text)."""
        start = 0 if self.read == "target" else self.target
        return slice(start, start + (self.target if self.read == "target" else self.reference))

    @property
    def queries(self) -> slice:
        """The read image's rows in the joint sequence; its own keys are the same positions."""
        rows = self.image_rows
        return slice(self.text + rows.start, self.text + rows.stop)


def record_attention(store: AttentionStore, name: str, query: torch.Tensor, key: torch.Tensor,
                     tokens: JointTokens, scale: float, cross: bool, affinity: bool) -> None:
    """Softmax probabilities of the read image's queries over ALL keys of the joint sequence,
    as the attention itself computes them, a few heads at a time, in float32.

    ``query``/``key``: B×S×H×D after their norms and rotary embedding (what goes into the
    attention function). Records the image→text block, averaged over heads, as
    ``store.cross[name]`` (B×N×T) and the image→same-image block, renormalised per head so
    rows sum to 1 and averaged over heads, with ``store.add_self`` (B×N×N). Only the N query
    rows are computed: the text and the other image's rows are never needed.
    """
    rows, text = tokens.queries, slice(0, tokens.text)
    batch, length, heads, _ = key.shape
    n = rows.stop - rows.start
    # heads in chunks whose B×chunk×N×S float32 scores stay under SELF_ATTENTION_BUDGET (at least one head)
    step = max(1, min(heads, SELF_ATTENTION_BUDGET // (4 * batch * n * length)))
    cross_sum: Optional[torch.Tensor] = None
    self_sum: Optional[torch.Tensor] = None
    with torch.autocast(query.device.type, enabled=False):
        q = query[:, rows].transpose(1, 2)  # B×H×N×D
        k = key.transpose(1, 2)  # B×H×S×D
        for h in range(0, heads, step):
            probs = (torch.matmul(q[:, h:h + step].float(), k[:, h:h + step].float().transpose(-1, -2))
                     * scale).softmax(dim=-1)  # B×chunk×N×S
            if cross:
                part = probs[..., text].sum(dim=1)
                cross_sum = part if cross_sum is None else cross_sum.add_(part)
            if affinity:
                same = probs[..., rows]
                part = (same / same.sum(dim=-1, keepdim=True)).sum(dim=1)
                self_sum = part if self_sum is None else self_sum.add_(part)
            del probs
    if cross:
        store.cross[name] = cross_sum / heads
    if affinity:
        store.add_self(self_sum / heads)


ProcessorFactory = Callable[[Any, AttentionStore, str, JointTokens, bool, bool], Any]


@contextmanager
def joint_capturing(denoiser: nn.Module, plan: JointCapturePlan, tokens: JointTokens,
                    make_processor: ProcessorFactory, early_exit: bool = True, image_output: int = 1
                    ) -> Iterator[AttentionStore]:
    """Install capturing processors on the planned attention modules only, feature hooks and the
    early-exit hook; put every original back on exit, whatever happens.

    ``make_processor(original, store, name, tokens, cross, affinity)`` builds a family's capturing
    processor from the one it replaces. ``image_output``: which element of a block's output tuple
    is the image stream (FLUX and Qwen-Image blocks return ``(text, image)``).
    """
    store = AttentionStore()
    modules = dict(denoiser.named_modules())
    names = tuple(dict.fromkeys(plan.cross_layers + plan.self_layers))
    originals = {name: modules[name].processor for name in names}

    def read_image(output: Any) -> torch.Tensor:
        """The read image's rows of a block's image-stream output, as a B×C×h×w grid."""
        image = output[image_output] if isinstance(output, (tuple, list)) else output
        rows = image[:, tokens.image_rows].float()  # B×N×C
        return rows.transpose(1, 2).reshape(rows.shape[0], rows.shape[2], *tokens.grid)

    try:
        for name in names:
            modules[name].set_processor(make_processor(originals[name], store, name, tokens,
                                                       name in plan.cross_layers, name in plan.self_layers))
        with block_hooks(modules, plan, store, read_image, early_exit):
            yield store
    finally:
        for name, original in originals.items():
            modules[name].set_processor(original)


def _summary(blocks: tuple[str, ...]) -> str:
    """'transformer_blocks.0-18, single_transformer_blocks.0-37' for a long list of block names."""
    groups: dict[str, list[int]] = {}
    for block in blocks:
        prefix, index = block.rsplit(".", 1)
        groups.setdefault(prefix, []).append(int(index))
    return ", ".join(f"{p}.{min(i)}-{max(i)}" if len(i) > 1 else f"{p}.{i[0]}" for p, i in groups.items())


class JointLayout:
    """The blocks of a joint-attention transformer and the "auto" settings they imply.

    ``double``: the double-stream block names in execution order (separate text and image
    weights), ``single``: the single-stream ones after them (one stream, text first). Each has
    an attention module ``<block>.<attention>``. ``patch``: latent cells per token side (2 for
    the 2×2 packing), so the token grid is the latent grid >> log2(patch).
    """

    def __init__(self, double: tuple[str, ...], single: tuple[str, ...], vae_factor: int, default_resolution: int,
                 patch: int = 2, attention: str = "attn", auto_image_tokens: str = "reference"):
        self.double, self.single = tuple(double), tuple(single)
        self.blocks = self.double + self.single
        self.vae_factor = int(vae_factor)
        self.default_resolution = int(default_resolution)
        self.patch = int(patch)
        self.level = self.patch.bit_length() - 1
        self.attention = attention
        self.auto_image_tokens = auto_image_tokens

    @property
    def min_multiple(self) -> int:
        """Sides must hold whole patches of latent cells."""
        return self.vae_factor * self.patch

    def auto_attention_blocks(self) -> tuple[str, ...]:
        """The double-stream blocks from 40% to 80% of their depth (8-14 of FLUX.1's 19).

        RefAM (arXiv 2509.22650) found middle-to-late FLUX blocks to ground best, with global
        attention sinks in the deeper ones; this band is our reading of that, not a measured
        optimum. Only double-stream blocks: their text keys come from the text stream's own
        weights, and the forward can stop long before the 38 single-stream blocks.
        """
        count = len(self.double) or len(self.single)
        names = self.double or self.single
        low = round(0.4 * count)
        high = max(low + 1, round(0.8 * count))
        return names[min(low, count - 1):high]

    def _check_blocks(self, setting: str, names: tuple[str, ...]) -> None:
        for name in names:
            if name not in self.blocks:
                raise ValueError(f"setting {setting!r}: {name!r} is not a block of this transformer; "
                                 f"blocks: {_summary(self.blocks)}")

    def _only_token_side(self, setting: str, sides: tuple[int, ...], side: int) -> None:
        if set(sides) != {side}:
            raise ValueError(
                f"setting {setting!r}={sides if len(sides) > 1 else sides[0]!r}: a diffusion transformer attends "
                f"only on its token grid, latent side / {self.patch} = {side} at this resolution; use auto or {side}"
            )

    def resolve(self, settings: SegmentationSettings) -> SegmentationSettings:
        """Every "auto" replaced by its value for this transformer; other values checked."""
        if settings.prior_layers == "decoder":
            raise ValueError("setting 'prior_layers'='decoder': a diffusion transformer has no decoder; use all "
                             "(which blocks give the prior is set by attention_blocks)")
        resolution = self.default_resolution if settings.resolution == AUTO else settings.resolution
        multiple = self.min_multiple if settings.size_multiple == AUTO else settings.size_multiple
        if multiple % self.min_multiple:
            raise ValueError(f"setting 'size_multiple'={multiple}: must be a multiple of {self.min_multiple} "
                             f"(VAE factor {self.vae_factor} x {self.patch}x{self.patch} patches)")
        side = snap(resolution, multiple) // self.vae_factor // self.patch
        prior = (side,) if settings.prior_resolutions == AUTO else settings.prior_resolutions
        self._only_token_side("prior_resolutions", prior, side)
        affinity = side if settings.affinity_resolution == AUTO else settings.affinity_resolution
        self._only_token_side("affinity_resolution", (affinity,), side)
        attention = self.auto_attention_blocks() if settings.attention_blocks == AUTO else settings.attention_blocks
        self._check_blocks("attention_blocks", attention)
        # features of the last attention block, so that the forward can stop there
        features = ((max(attention, key=self.blocks.index),) if settings.feature_blocks == AUTO
                    else settings.feature_blocks)
        image_tokens = self.auto_image_tokens if settings.image_tokens == AUTO else settings.image_tokens
        # nothing captured is finer than the token grid
        work = side if settings.work_resolution == AUTO else settings.work_resolution
        resolved = settings.replace(
            resolution=resolution, size_multiple=multiple, prior_resolutions=prior, affinity_resolution=affinity,
            attention_blocks=attention, feature_blocks=features, image_tokens=image_tokens, work_resolution=work,
        )
        self.plan(resolved)
        return resolved

    def plan(self, settings: SegmentationSettings) -> JointCapturePlan:
        self._check_blocks("attention_blocks", settings.attention_blocks)
        self._check_blocks("feature_blocks", settings.feature_blocks)
        attention = tuple(f"{block}.{self.attention}" for block in sorted(set(settings.attention_blocks),
                                                                           key=self.blocks.index))
        needed = tuple(settings.attention_blocks) + tuple(settings.feature_blocks)
        return JointCapturePlan(
            cross_layers=attention, cross_levels=(self.level,) * len(attention), self_layers=attention,
            affinity_level=self.level, feature_modules=tuple(settings.feature_blocks),
            stop_after=max(needed, key=self.blocks.index), image_tokens=settings.image_tokens,
        )
