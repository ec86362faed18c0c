"""Tiny random-weight SDXL InstructPix2Pix / CosXL Edit models, built like diffusers' own
SDXL instruct-pix2pix tests build theirs (two CLIP text encoders, a ``text_time`` UNet), with
three UNet levels so that the "auto" settings resolve as on the real SDXL (cross-attention at
levels 1 and 2, deeper transformers at the deepest level).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

TIME_EMBED = 8  # addition_time_embed_dim: six micro-conditioning numbers of 8 each
TEXT_WIDTH = 16  # each text encoder's width; the UNet's cross_attention_dim is their sum
PROJECTION = 16  # the second encoder's pooled projection


def build_tiny_sdxl(cosxl: bool = False, in_channels: int = 8, seed: int = 0):
    """An SDXL InstructPix2Pix pipeline; ``cosxl``: CosXL Edit's EDM v-prediction schedule and
    latent scaling (``is_cosxl_edit=True``)."""
    from conftest import byte_tokenizer, clip_config, tiny_vae
    from diffusers import (
        EDMEulerScheduler,
        EulerDiscreteScheduler,
        StableDiffusionXLInstructPix2PixPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        in_channels=in_channels, out_channels=4, sample_size=16, layers_per_block=1, norm_num_groups=8,
        block_out_channels=(16, 16, 32),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 1, 2), attention_head_dim=(2, 4, 8), use_linear_projection=True,
        addition_embed_type="text_time", addition_time_embed_dim=TIME_EMBED,
        projection_class_embeddings_input_dim=6 * TIME_EMBED + PROJECTION, cross_attention_dim=2 * TEXT_WIDTH,
    )
    torch.manual_seed(seed)
    vae = tiny_vae(scaling_factor=0.13025)
    tokenizer = byte_tokenizer()
    config = clip_config(tokenizer, hidden_size=TEXT_WIDTH, num_hidden_layers=3, projection_dim=PROJECTION,
                         hidden_act="gelu")
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(config)
    torch.manual_seed(seed + 1)
    text_encoder_2 = CLIPTextModelWithProjection(config)
    if cosxl:
        scheduler = EDMEulerScheduler(sigma_min=0.002, sigma_max=120.0, sigma_data=1.0,
                                      prediction_type="v_prediction", sigma_schedule="exponential")
    else:
        scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    return StableDiffusionXLInstructPix2PixPipeline(
        vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tokenizer,
        tokenizer_2=byte_tokenizer(), unet=unet, scheduler=scheduler, add_watermarker=False, is_cosxl_edit=cosxl,
    )


def save_tiny_sdxl(folder: Path, cosxl: bool = False, **options) -> Path:
    """Save a tiny SDXL editor. diffusers does not save CosXL's ``is_cosxl_edit`` flag unless it is
    registered in the pipeline's config first (the recipe docs/method.md gives for converting CosXL
    Edit); from_pretrained then passes it back to the pipeline."""
    pipe = build_tiny_sdxl(cosxl, **options)
    if cosxl:
        pipe.register_to_config(is_cosxl_edit=True)
    pipe.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_sdxl_dir(tmp_path_factory) -> Path:
    """A saved tiny SDXL InstructPix2Pix folder (diffusers layout, Euler schedule)."""
    return save_tiny_sdxl(tmp_path_factory.mktemp("tiny-sdxl-ip2p"))


@pytest.fixture(scope="session")
def tiny_cosxl_dir(tmp_path_factory) -> Path:
    """A saved tiny CosXL Edit folder (EDM v-prediction schedule, is_cosxl_edit)."""
    return save_tiny_sdxl(tmp_path_factory.mktemp("tiny-cosxl-edit"), cosxl=True, seed=1)
