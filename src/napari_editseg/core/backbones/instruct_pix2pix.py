"""InstructPix2Pix and its fine-tunes (MagicBrush, …): a UNet2DConditionModel on 8 channels
(noise latents + image latents), one CLIP text encoder, DDPM-family schedulers."""

from __future__ import annotations

from typing import Optional

import torch
from diffusers.utils.torch_utils import randn_tensor

from ..budget import Need
from ..capture import AttentionStore
from ..layout import CapturePlan
from ..model import DEFAULT_MODEL
from ..settings import AUTO, SegmentationSettings
from .base import EditingModel
from .unet import UNetLayout, forward_and_capture, unet_needs


class InstructPix2Pix(EditingModel):
    family = "instruct-pix2pix"
    pipeline_class = "StableDiffusionInstructPix2PixPipeline"
    denoiser_name = "unet"
    components = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
    known_models = {
        DEFAULT_MODEL: "InstructPix2Pix",
        "vinesmsuic/magicbrush-jul7": "MagicBrush (InstructPix2Pix fine-tuned on MagicBrush)",
    }
    pipeline_options = dict(safety_checker=None, feature_extractor=None, requires_safety_checker=False)

    @property
    def unet(self):
        return self.pipe.unet

    @property
    def text_encoder(self):
        return self.pipe.text_encoder

    def check_channels(self, kind: str = "InstructPix2Pix") -> None:
        """An editor of this kind takes noise latents and image latents as channels of one input."""
        expected = 2 * self.vae.config.latent_channels
        if self.unet.config.in_channels != expected:
            raise ValueError(
                f"{self.source!r} is not an {kind}-style editing model: its UNet takes "
                f"{self.unet.config.in_channels} input channels, an editing model takes {expected} "
                "(noise latents + image latents)"
            )

    def check(self) -> None:
        self.check_channels()
        if self.text_encoder.config.hidden_size != self.unet.config.cross_attention_dim:
            raise ValueError(
                f"{self.source!r}: text encoder width {self.text_encoder.config.hidden_size} does not match "
                f"the UNet's cross_attention_dim {self.unet.config.cross_attention_dim}"
            )

    def layout(self) -> UNetLayout:
        return UNetLayout(self.unet, self.vae_factor)

    @property
    def max_tokens(self) -> int:
        return min(self.tokenizer.model_max_length, self.text_encoder.config.max_position_embeddings)

    def schedule(self):
        """A fresh copy of the scheduler over its whole training schedule (fresh: diffusers
        schedulers keep a step index between calls)."""
        scheduler = type(self.scheduler).from_config(self.scheduler.config)
        scheduler.set_timesteps(scheduler.config.num_train_timesteps, device=self.device)
        return scheduler

    def resolve_timestep(self, settings: SegmentationSettings) -> SegmentationSettings:
        if settings.timestep == AUTO:
            return settings.replace(timestep=int(self.schedule().timesteps[0]))
        if not 0 <= settings.timestep < self.scheduler.config.num_train_timesteps:
            raise ValueError(
                f"setting 'timestep'={settings.timestep}: must lie in "
                f"[0, {self.scheduler.config.num_train_timesteps - 1}]"
            )
        return settings

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """The unscaled mode of the posterior, which is what InstructPix2Pix conditions on."""
        return self.vae.encode(pixels).latent_dist.mode().to(self.dtype)

    def encode_text(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """As the diffusers pipeline encodes a prompt: padded to max length, truncated."""
        tokens = self.tokenizer(texts, padding="max_length", max_length=self.max_tokens, truncation=True,
                                return_tensors="pt")
        mask = tokens.attention_mask.to(self.device) if getattr(
            self.text_encoder.config, "use_attention_mask", False) else None
        return {"encoder_hidden_states": self.text_encoder(tokens.input_ids.to(self.device), attention_mask=mask)[0]}

    def noisy_latents(self, settings: SegmentationSettings, image_latents: torch.Tensor, rows: int
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """At a later timestep (a study setting), the noise is added to the image's own scaled
        latents, which stand in for the edit trajectory at that time."""
        scheduler = self.schedule()
        first = scheduler.timesteps[0]
        t = first if settings.timestep == int(first) else torch.tensor(settings.timestep, device=self.device)
        generator = torch.Generator("cpu").manual_seed(settings.seed)
        shape = (settings.noise_samples, self.vae.config.latent_channels, *image_latents.shape[-2:])
        noise = randn_tensor(shape, generator=generator, device=self.device, dtype=image_latents.dtype)
        if t is first:
            latents = noise * scheduler.init_noise_sigma
        else:
            clean = image_latents.expand(settings.noise_samples, -1, -1, -1) * self.vae.config.scaling_factor
            latents = scheduler.add_noise(clean, noise, t.reshape(1))
        latents = scheduler.scale_model_input(latents, t)
        return latents.repeat(rows, 1, 1, 1), t

    def unet_conditioning(self, text: dict[str, torch.Tensor], size: tuple[int, int]) -> dict:
        """The UNet's keyword arguments besides sample and timestep (``size``: the model input's (h, w))."""
        return {"encoder_hidden_states": text["encoder_hidden_states"]}

    def forward(self, noisy: torch.Tensor, image_latents: torch.Tensor, timestep: torch.Tensor,
                text: dict[str, torch.Tensor], plan: CapturePlan, early_exit: bool
                ) -> tuple[Optional[torch.Tensor], AttentionStore]:
        size = (noisy.shape[-2] * self.vae_factor, noisy.shape[-1] * self.vae_factor)
        return forward_and_capture(self.unet, torch.cat([noisy, image_latents], dim=1), timestep, plan, early_exit,
                                   **self.unet_conditioning(text, size))

    def memory_needs(self, settings: SegmentationSettings, plan: CapturePlan, size: tuple[int, int], rows: int,
                     expressions: int) -> list[Need]:
        return unet_needs(self, settings, plan, size, rows, expressions)
