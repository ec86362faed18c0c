"""SDXL InstructPix2Pix and CosXL Edit: an SDXL UNet on 8 channels, two CLIP text encoders
whose penultimate hidden states are concatenated per token, the second one's pooled embedding
and the size micro-conditioning as ``added_cond_kwargs``.

CosXL Edit (``is_cosxl_edit``) scales the image latents by the VAE's scaling factor and runs an
EDM schedule, whose "timesteps" are the noise levels' ``0.25·log σ``. The integer ``timestep``
setting then counts down the scheduler's whole schedule of ``num_train_timesteps`` noise levels
as it does on a DDPM schedule: ``num_train_timesteps - 1`` (auto) is the first, largest σ.
"""

from __future__ import annotations

import warnings

import torch
from diffusers.utils.torch_utils import randn_tensor

from ..settings import AUTO, SegmentationSettings
from .instruct_pix2pix import InstructPix2Pix

PROBE = "make the small red disc on the left of the table blue, not green!"  # tokenisers must agree on it


class SDXLInstructPix2Pix(InstructPix2Pix):
    family = "sdxl-instruct-pix2pix"
    pipeline_class = "StableDiffusionXLInstructPix2PixPipeline"
    components = ("unet", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler")
    known_models = {"diffusers/sdxl-instructpix2pix-768": "SDXL InstructPix2Pix (768 px; about 7 GB)"}
    pipeline_options = dict(add_watermarker=False)  # only latents are made: no image to watermark

    @property
    def cosxl(self) -> bool:
        """CosXL Edit: the image latents are scaled (diffusers' ``is_cosxl_edit``)."""
        return bool(getattr(self.pipe, "is_cosxl_edit", False))

    @property
    def continuous(self) -> bool:
        """An EDM schedule: timesteps are preconditioned noise levels, not integers."""
        return hasattr(self.scheduler, "precondition_noise")

    def check(self) -> None:
        self.check_channels("SDXL InstructPix2Pix")
        if self.pipe.text_encoder is None or self.pipe.text_encoder_2 is None:
            raise ValueError(f"{self.source!r}: SDXL needs both its text encoders (one is missing)")
        one, two = (t.convert_ids_to_tokens(t(PROBE, add_special_tokens=False).input_ids)
                    for t in (self.pipe.tokenizer, self.pipe.tokenizer_2))
        if one != two or self.pipe.tokenizer.model_max_length != self.pipe.tokenizer_2.model_max_length:
            raise ValueError(f"{self.source!r}: its two tokenizers split text differently, so token positions "
                             "of the expression are not the same in both encoders' halves of the text embedding")
        if self.continuous and not self.cosxl:
            warnings.warn(
                f"{self.source!r} runs an EDM schedule like CosXL Edit, but its model_index.json does not set "
                "is_cosxl_edit, so its image latents are read unscaled; if it is CosXL Edit, register the flag "
                "when converting it (pipe.register_to_config(is_cosxl_edit=True), docs/method.md)",
                UserWarning, stacklevel=2,
            )

    def prepare(self) -> "SDXLInstructPix2Pix":
        """As the pipeline does, a float16 VAE with ``force_upcast`` encodes in float32 (it overflows
        in float16); it is kept in float32, since only its encoder ever runs."""
        super().prepare()
        if self.vae.dtype == torch.float16 and self.vae.config.force_upcast:
            self.vae.to(torch.float32)
        return self

    # -- timesteps ------------------------------------------------------------------------
    def resolve_timestep(self, settings: SegmentationSettings) -> SegmentationSettings:
        if not self.continuous:
            return super().resolve_timestep(settings)
        last = self.scheduler.config.num_train_timesteps - 1
        if settings.timestep == AUTO:
            return settings.replace(timestep=last)
        if not 0 <= settings.timestep <= last:
            raise ValueError(f"setting 'timestep'={settings.timestep}: must lie in [0, {last}] "
                             f"({last}: the largest noise level of this EDM schedule)")
        return settings

    def noisy_latents(self, settings: SegmentationSettings, image_latents: torch.Tensor, rows: int
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.continuous:
            return super().noisy_latents(settings, image_latents, rows)
        scheduler = self.schedule()
        index = scheduler.config.num_train_timesteps - 1 - settings.timestep
        t = scheduler.timesteps[index]
        scheduler.set_begin_index(index)  # add_noise and scale_model_input look their noise level up by it
        generator = torch.Generator("cpu").manual_seed(settings.seed)
        shape = (settings.noise_samples, self.vae.config.latent_channels, *image_latents.shape[-2:])
        noise = randn_tensor(shape, generator=generator, device=self.device, dtype=image_latents.dtype)
        if index == 0:
            latents = noise * scheduler.init_noise_sigma
        else:  # CosXL's image latents are scaled already
            scale = 1.0 if self.cosxl else self.vae.config.scaling_factor
            clean = image_latents.expand(settings.noise_samples, -1, -1, -1) * scale
            latents = scheduler.add_noise(clean, noise, t.reshape(1))
        latents = scheduler.scale_model_input(latents, t)
        return latents.repeat(rows, 1, 1, 1), t

    # -- image and text -------------------------------------------------------------------
    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """The posterior's mode (in the VAE's own dtype, float32 when upcast); CosXL scales it."""
        latents = self.vae.encode(pixels.to(self.vae.dtype)).latent_dist.mode().to(self.dtype)
        return latents * self.vae.config.scaling_factor if self.cosxl else latents

    @property
    def max_tokens(self) -> int:
        # encode_prompt pads and truncates to the tokenizers' model_max_length
        return self.tokenizer.model_max_length

    def encode_text(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """The pipeline's own ``encode_prompt`` (both encoders, no guidance) and the pooled embedding."""
        embeds, _, pooled, _ = self.pipe.encode_prompt(texts, device=self.device, num_images_per_prompt=1,
                                                       do_classifier_free_guidance=False)
        return {"encoder_hidden_states": embeds, "text_embeds": pooled}

    def unet_conditioning(self, text: dict[str, torch.Tensor], size: tuple[int, int]) -> dict:
        """Micro-conditioning as the pipeline sets it for an image of the model input's size:
        original and target size ``size``, crop (0, 0)."""
        hidden = text["encoder_hidden_states"]
        time_ids = self.pipe._get_add_time_ids(
            tuple(size), (0, 0), tuple(size), dtype=hidden.dtype,
            text_encoder_projection_dim=self.pipe.text_encoder_2.config.projection_dim,
        ).to(self.device).repeat(len(hidden), 1)
        return {"encoder_hidden_states": hidden,
                "added_cond_kwargs": {"text_embeds": text["text_embeds"], "time_ids": time_ids}}
