"""A family added the way docs/method.md ("Adding a backbone") says: this module, and one registry
line (``BACKBONES["StableDiffusionPipeline"] = "sd_family:TextToImageSD"``, made by the contract test).

Stable Diffusion text-to-image models read SDEdit-style, as RefAM-SD reads them: no image channels,
so the denoiser's input is the image's own latents noised to a middle timestep, and what the prior,
the affinity and the features show of the image comes through that input alone. Everything else —
capture, layout, text, memory — is the UNet family's (``core/backbones/unet.py``, InstructPix2Pix).
"""

from __future__ import annotations

from typing import Optional

import torch

from napari_editseg.core.backbones.instruct_pix2pix import InstructPix2Pix
from napari_editseg.core.backbones.unet import forward_and_capture
from napari_editseg.core.capture import AttentionStore
from napari_editseg.core.layout import CapturePlan
from napari_editseg.core.settings import AUTO, SegmentationSettings

SDEDIT_TIMESTEP = 600  # "auto": late enough to denoise, early enough that the image still shows


class TextToImageSD(InstructPix2Pix):
    family = "sd-text-to-image"
    pipeline_class = "StableDiffusionPipeline"
    components = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
    known_models = {"example/tiny-sd-text-to-image": "Stable Diffusion, read SDEdit-style (a test family)"}

    def check(self) -> None:
        channels, latent = self.unet.config.in_channels, self.vae.config.latent_channels
        if channels != latent:
            raise ValueError(f"{self.source!r} is not a text-to-image model: its UNet takes {channels} channels, "
                             f"not the VAE's {latent}")

    def resolve_timestep(self, settings: SegmentationSettings) -> SegmentationSettings:
        """auto = :data:`SDEDIT_TIMESTEP`: at the first step the input would be noise alone."""
        return super().resolve_timestep(settings.replace(timestep=SDEDIT_TIMESTEP) if settings.timestep == AUTO
                                        else settings)

    def forward(self, noisy: torch.Tensor, image_latents: torch.Tensor, timestep: torch.Tensor,
                text: dict[str, torch.Tensor], plan: CapturePlan, early_exit: bool
                ) -> tuple[Optional[torch.Tensor], AttentionStore]:
        """The noised image latents alone are the input (the image latents are in them already)."""
        size = (noisy.shape[-2] * self.vae_factor, noisy.shape[-1] * self.vae_factor)
        return forward_and_capture(self.unet, noisy, timestep, plan, early_exit, **self.unet_conditioning(text, size))
