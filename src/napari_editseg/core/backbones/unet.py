"""Everything that is particular to UNet denoisers (``UNet2DConditionModel``: InstructPix2Pix, its
fine-tunes, SDXL InstructPix2Pix, CosXL Edit): where things are inside one, the "auto" settings,
the capturing attention processor, the one forward with its early exit, and the memory estimate.

A *level* is a UNet resolution: level 0 is the latent grid, level l is the latent grid halved
l times. Settings speak of latent *sides* (``prior_resolutions=(16, 32)`` on a 64-latent
InstructPix2Pix), so they are mapped here to levels, and "auto" settings are chosen by the same
rule on any UNet2DConditionModel layout.

Captured attention layers get a :class:`CapturingAttnProcessor` (explicit softmax, maps averaged
over heads as they are produced); every other layer keeps its own fused processor. Block outputs
are recorded with forward hooks (:func:`~napari_editseg.core.capture.block_hooks`), and a hook on
the last needed block ends the forward early. Everything is removed afterwards, so the UNet is
left exactly as it was.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Iterator, Optional

import torch
from diffusers.models.attention_processor import Attention
from torch import nn

from ..budget import Need, bytes_of, vae_needs
from ..capture import SELF_ATTENTION_BUDGET, AttentionStore, StopForward, block_hooks
from ..layout import CapturePlan, snap
from ..settings import AUTO, SegmentationSettings


@dataclass(frozen=True)
class AttentionLayer:
    name: str  # module name, e.g. "up_blocks.1.attentions.0.transformer_blocks.0.attn2"
    cross: bool
    level: int



class UNetLayout:
    """The geometry of a UNet2DConditionModel plus its VAE's downsampling factor."""

    def __init__(self, unet: nn.Module, vae_factor: int):
        config = unet.config
        sample_size = config.sample_size
        self.latent_side = int(max(sample_size) if isinstance(sample_size, (tuple, list)) else sample_size)
        self.vae_factor = int(vae_factor)
        self.n_levels = len(unet.down_blocks)
        self.blocks = tuple(
            [f"down_blocks.{i}" for i in range(len(unet.down_blocks))]
            + (["mid_block"] if unet.mid_block is not None else [])
            + [f"up_blocks.{j}" for j in range(len(unet.up_blocks))]
        )
        self.module_names = frozenset(name for name, _ in unet.named_modules() if name)
        self.attention = tuple(
            AttentionLayer(name, bool(module.is_cross_attention), self._level_of_module(name))
            for name, module in unet.named_modules()
            if isinstance(module, Attention)
        )
        self.cross_levels = sorted({a.level for a in self.attention if a.cross})
        self.self_levels = sorted({a.level for a in self.attention if not a.cross})
        if not self.cross_levels:
            raise ValueError("this UNet has no cross-attention layers, so it cannot ground text")

    def _level_of_module(self, name: str) -> int:
        parts = name.split(".")
        if parts[0] == "down_blocks":
            return int(parts[1])
        if parts[0] == "up_blocks":
            return self.n_levels - 1 - int(parts[1])
        return self.n_levels - 1  # mid_block

    @staticmethod
    def block_of(name: str) -> str:
        parts = name.split(".")
        return ".".join(parts[:2]) if parts[0] in ("down_blocks", "up_blocks") else parts[0]

    # -- "auto" -----------------------------------------------------------------------
    @property
    def default_resolution(self) -> int:
        return self.latent_side * self.vae_factor

    @property
    def min_multiple(self) -> int:
        """Smallest side multiple for which every UNet level divides evenly."""
        return self.vae_factor * 2 ** (self.n_levels - 1)

    def _auto_prior_levels(self) -> list[int]:
        # latent/4 and latent/2 on InstructPix2Pix (16 and 32 of 64)
        levels = [level for level in (2, 1) if level in self.cross_levels]
        return levels or [max(self.cross_levels)]

    def _auto_affinity_level(self) -> int:
        return min(self.self_levels, key=lambda level: (abs(level - 1), level))

    def _auto_feature_blocks(self) -> tuple[str, ...]:
        # the two up-blocks before the last: up_blocks.1 (32x32) and up_blocks.2 (64x64) on InstructPix2Pix
        last = len([b for b in self.blocks if b.startswith("up_blocks.")]) - 1
        return tuple(f"up_blocks.{j}" for j in range(max(0, last - 2), last)) or ("up_blocks.0",)

    def resolve(self, settings: SegmentationSettings) -> SegmentationSettings:
        """Replace every "auto" size/block setting by its value for this UNet and check the rest."""
        if settings.attention_blocks != AUTO:
            raise ValueError(
                "setting 'attention_blocks' is for diffusion transformers; a UNet's attention layers are chosen "
                "by prior_resolutions, prior_layers and affinity_resolution"
            )
        if settings.image_tokens == "reference":
            raise ValueError("setting 'image_tokens'='reference': this UNet sees the image as channels of the "
                             "target positions, not as tokens of its own; use auto or target")
        resolution = self.default_resolution if settings.resolution == AUTO else settings.resolution
        multiple = self.min_multiple if settings.size_multiple == AUTO else settings.size_multiple
        if multiple % self.min_multiple:
            raise ValueError(
                f"setting 'size_multiple'={multiple}: must be a multiple of {self.min_multiple} "
                "so that every UNet level divides the image evenly"
            )
        side = snap(resolution, multiple) // self.vae_factor  # latent long side
        prior = (
            tuple(side >> level for level in self._auto_prior_levels())
            if settings.prior_resolutions == AUTO
            else settings.prior_resolutions
        )
        affinity = side >> self._auto_affinity_level() if settings.affinity_resolution == AUTO \
            else settings.affinity_resolution
        blocks = self._auto_feature_blocks() if settings.feature_blocks == AUTO else settings.feature_blocks
        work = side if settings.work_resolution == AUTO else settings.work_resolution
        resolved = settings.replace(
            resolution=resolution, size_multiple=multiple, prior_resolutions=prior,
            affinity_resolution=affinity, feature_blocks=blocks, work_resolution=work, image_tokens="target",
        )
        self.plan(resolved)  # raises if a side or block does not exist in this UNet
        return resolved

    # -- what to capture ------------------------------------------------------------
    def level_of_side(self, name: str, side: int, latent_side: int, available: list[int]) -> int:
        sides = {latent_side >> level: level for level in available}
        if side not in sides:
            raise ValueError(
                f"setting {name!r}: no attention layer works at latent side {side} for this model "
                f"and size; available: {', '.join(str(s) for s in sorted(sides))}"
            )
        return sides[side]

    def plan(self, settings: SegmentationSettings) -> CapturePlan:
        latent_side = snap(settings.resolution, settings.size_multiple) // self.vae_factor
        prior_levels = {
            self.level_of_side("prior_resolutions", side, latent_side, self.cross_levels)
            for side in settings.prior_resolutions
        }
        affinity_level = self.level_of_side(
            "affinity_resolution", settings.affinity_resolution, latent_side, self.self_levels
        )
        for name in settings.feature_blocks:
            if name not in self.module_names or self.block_of(name) not in self.blocks:
                raise ValueError(
                    f"setting 'feature_blocks': {name!r} is not a block of this UNet; "
                    f"blocks: {', '.join(self.blocks)}"
                )
        cross = [a for a in self.attention if a.cross and a.level in prior_levels
                 and (settings.prior_layers == "all" or a.name.startswith("up_blocks."))]
        if not cross:
            raise ValueError(
                f"setting 'prior_layers'={settings.prior_layers!r}: no decoder cross-attention layer works at "
                f"latent sides {', '.join(map(str, settings.prior_resolutions))} for this model"
            )
        self_ = tuple(a.name for a in self.attention if not a.cross and a.level == affinity_level)
        cross_names = tuple(a.name for a in cross)
        needed = {self.block_of(name) for name in cross_names + self_ + tuple(settings.feature_blocks)}
        stop_after = max(needed, key=self.blocks.index)
        return CapturePlan(
            cross_layers=cross_names, cross_levels=tuple(a.level for a in cross), self_layers=self_,
            affinity_level=affinity_level, feature_modules=tuple(settings.feature_blocks), stop_after=stop_after,
        )


# -- capture ------------------------------------------------------------------------------
class CapturingAttnProcessor:
    """Attention with an explicit softmax whose head-averaged probabilities go to a store.

    Same signature and result as diffusers' ``AttnProcessor``. Self-attention is
    computed a few heads at a time (as many as fit in ``SELF_ATTENTION_BUDGET``) and
    summed as it goes, so per-head N×N maps of all heads never exist at once for large N;
    cross-attention maps are N×77 and are computed for all heads together.
    """

    def __init__(self, store: AttentionStore, name: str):
        self.store = store
        self.name = name

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: Optional[torch.Tensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        temb: Optional[torch.Tensor] = None,
        *args,
        **kwargs,
    ) -> torch.Tensor:
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channel, height * width).transpose(1, 2)
        batch = hidden_states.shape[0]
        is_cross = encoder_hidden_states is not None
        context = encoder_hidden_states if is_cross else hidden_states
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, context.shape[1], batch)
            attention_mask = attention_mask.view(batch, attn.heads, -1, attention_mask.shape[-1])
        query, key, value = self._heads(attn, hidden_states, context, is_cross)
        out = self._attend(attn, query, key, value, attention_mask, is_cross)
        hidden_states = out.transpose(1, 2).reshape(batch, -1, attn.heads * query.shape[-1]).to(query.dtype)
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor

    @staticmethod
    def _heads(attn: Attention, hidden_states: torch.Tensor, context: torch.Tensor, is_cross: bool
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Query, key and value as B×heads×length×head_dim, normalised as the layer's own processor does."""
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if is_cross and attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)
        key = attn.to_k(context)
        value = attn.to_v(context)
        batch, heads = hidden_states.shape[0], attn.heads
        head_dim = key.shape[-1] // heads
        query, key, value = (t.view(batch, -1, heads, head_dim).transpose(1, 2) for t in (query, key, value))
        if getattr(attn, "norm_q", None) is not None:
            query = attn.norm_q(query)
        if getattr(attn, "norm_k", None) is not None:
            key = attn.norm_k(key)
        return query, key, value

    def _attend(self, attn: Attention, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                attention_mask: Optional[torch.Tensor], is_cross: bool) -> torch.Tensor:
        """softmax(q·kᵀ)·v per head, its head-averaged probabilities recorded in the store."""
        def probabilities(q: torch.Tensor, k: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
            # float32 maps whatever the networks compute in (autocast would make this matmul bf16)
            with torch.autocast(q.device.type, enabled=False):
                scores = torch.matmul(q.float(), k.float().transpose(-1, -2)) * attn.scale
                if mask is not None:
                    scores = scores + mask.float()
                return scores.softmax(dim=-1)

        if is_cross:
            probs = probabilities(query, key, attention_mask)  # B×heads×N×T
            self.store.cross[self.name] = probs.mean(dim=1)
            return torch.matmul(probs.to(value.dtype), value)
        # heads in chunks small enough that a chunk's N×N maps stay under SELF_ATTENTION_BUDGET
        batch, heads, length = query.shape[:3]
        step = max(1, min(heads, SELF_ATTENTION_BUDGET // (4 * batch * length * length)))
        out = torch.empty_like(query)
        summed = None
        for h in range(0, heads, step):
            mask = None if attention_mask is None else attention_mask[:, h:h + step]
            p = probabilities(query[:, h:h + step], key[:, h:h + step], mask)  # B×chunk×N×N
            out[:, h:h + step] = torch.matmul(p.to(value.dtype), value[:, h:h + step])
            part = p.sum(dim=1)
            summed = part if summed is None else summed.add_(part)
        self.store.add_self(summed / heads)
        return out


def _first_tensor(output: Any) -> torch.Tensor:
    """A UNet block's output (a tensor, or a tuple whose first element is the hidden states), in float32."""
    return (output[0] if isinstance(output, (tuple, list)) else output).float()


@contextmanager
def capturing(unet: nn.Module, plan: CapturePlan, early_exit: bool = True) -> Iterator[AttentionStore]:
    """Install processors and hooks for one forward; remove them on exit, whatever happens."""
    store = AttentionStore()
    original = unet.attn_processors
    replaced = dict(original)
    for name in plan.cross_layers + plan.self_layers:
        replaced[f"{name}.processor"] = CapturingAttnProcessor(store, name)
    try:
        unet.set_attn_processor(replaced)
        with block_hooks(dict(unet.named_modules()), plan, store, _first_tensor, early_exit):
            yield store
    finally:
        unet.set_attn_processor(dict(original))


def forward_and_capture(
    unet: nn.Module,
    sample: torch.Tensor,
    timestep: torch.Tensor,
    plan: CapturePlan,
    early_exit: bool = True,
    **conditioning: Any,
) -> tuple[Optional[torch.Tensor], AttentionStore]:
    """Run the UNet once on ``sample`` with ``conditioning`` (its text keywords); return its noise
    prediction (None after an early exit) and the store."""
    with capturing(unet, plan, early_exit) as store:
        try:
            noise = unet(sample, timestep, return_dict=False, **conditioning)[0]
        except StopForward:
            noise = None
    return noise, store


# -- memory -------------------------------------------------------------------------------
def unet_needs(model: Any, settings: SegmentationSettings, plan: CapturePlan, size: tuple[int, int], rows: int,
               expressions: int) -> list[Need]:
    """What one batched forward and the later stages hold, from the model's configs and the
    resolved settings; ``size`` is the (h, w) the model sees, ``rows`` the UNet batch.

    The self-attention maps captured for propagation grow with the fourth power of
    ``affinity_resolution`` (N×N for N = side²), the UNet's activations with the latent area.
    """
    vae_factor = model.vae_factor
    latent = (size[0] // vae_factor, size[1] // vae_factor)
    area = latent[0] * latent[1]
    unet = model.unet.config
    element = bytes_of(model.dtype)
    per_level = sum(c * (unet.layers_per_block + 1) / 4**level for level, c in enumerate(unet.block_out_channels))
    affinity_n = (latent[0] >> plan.affinity_level) * (latent[1] >> plan.affinity_level)
    work = settings.work_resolution
    feature_width = sum(
        unet.block_out_channels[::-1][min(int(name.split(".")[1]), len(unet.block_out_channels) - 1)]
        if name.startswith("up_blocks.") else max(unet.block_out_channels)
        for name in plan.feature_modules
    )
    return [
        Need(2 * rows * affinity_n**2 * 4 + min(SELF_ATTENTION_BUDGET, rows * affinity_n**2 * 4 * 8),
             f"self-attention maps at affinity_resolution={settings.affinity_resolution}",
             f"affinity_resolution (now {settings.affinity_resolution}) or resolution (now {settings.resolution})"),
        Need(int(rows * area * element * (per_level + 6 * unet.block_out_channels[0])),
             f"UNet activations for {rows} rows at resolution={settings.resolution}",
             f"resolution (now {settings.resolution})"
             + (f" or noise_samples (now {settings.noise_samples})" if settings.noise_samples > 1 else "")),
        vae_needs(model, size, settings.resolution),
        Need(3 * expressions * feature_width * work * work * 4, f"features on the {work}x{work} work grid",
             f"work_resolution (now {work})"),
    ]
