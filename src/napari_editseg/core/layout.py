"""Where things are inside a UNet: levels, attention layers, and the "auto" settings.

A *level* is a UNet resolution: level 0 is the latent grid, level l is the latent
grid halved l times. Settings speak of latent *sides* (``prior_resolutions=(16, 32)``
on a 64-latent InstructPix2Pix), so they are mapped here to levels, and "auto"
settings are chosen by the same rule on any UNet2DConditionModel layout.
"""

from __future__ import annotations

from dataclasses import dataclass

from diffusers.models.attention_processor import Attention
from torch import nn

from .settings import AUTO, SegmentationSettings


@dataclass(frozen=True)
class AttentionLayer:
    name: str  # module name, e.g. "up_blocks.1.attentions.0.transformer_blocks.0.attn2"
    cross: bool
    level: int


@dataclass(frozen=True)
class CapturePlan:
    """What one UNet forward must record, and after which block it may stop."""

    cross_layers: tuple[str, ...]
    cross_levels: tuple[int, ...]  # level of each cross layer
    self_layers: tuple[str, ...]
    affinity_level: int
    feature_modules: tuple[str, ...]
    stop_after: str  # top-level block after which nothing is needed


def snap(side: float, multiple: int) -> int:
    """Round a side to the nearest positive multiple."""
    return max(multiple, int(round(side / multiple)) * multiple)


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
