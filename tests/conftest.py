"""Tiny random-weight InstructPix2Pix models, built the way diffusers' pipeline tests build
theirs, saved with ``save_pretrained`` and loaded through the same path users take.

Nothing here is mocked: every test that runs a segmentation runs a real UNet forward.
"""

from __future__ import annotations

import os
from contextlib import contextmanager

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch the hub


def byte_tokenizer():
    """A CLIP tokenizer with no download: one token per byte-level character (no merges)."""
    from transformers import CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    chars = list(bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


# Four UNet levels like InstructPix2Pix (cross-attention in the three finest, a plain
# deepest block), so that sides 4/8/16 of a 16-latent play the roles of 16/32/64.
FOUR_LEVELS = dict(
    block_out_channels=(16, 16, 32, 32),
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    layers_per_block=1,
    sample_size=16,
    norm_num_groups=8,
    attention_head_dim=2,
)
# The two-level UNet of diffusers' own InstructPix2Pix tests.
TWO_LEVELS = dict(
    block_out_channels=(32, 64),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
    layers_per_block=2,
    sample_size=32,
)


def tiny_vae(**config):
    """The two-level AutoencoderKL (VAE factor 2, 4 latent channels) of every tiny model here;
    ``config``: a family's own fields (shift and scale, no quant convs, …)."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=(16, 32), in_channels=3, out_channels=3, norm_num_groups=8,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4,
        **config,
    )


def clip_config(tokenizer, **config):
    """A tiny CLIP text config whose vocabulary and special ids are ``tokenizer``'s; ``config``: width,
    depth and a family's own fields."""
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, intermediate_size=37, num_attention_heads=4,
        max_position_embeddings=77, layer_norm_eps=1e-5, **config,
    )


def build_tiny_pipeline(unet_layout: dict = FOUR_LEVELS, in_channels: int = 8, seed: int = 0):
    from diffusers import (
        EulerAncestralDiscreteScheduler,
        StableDiffusionInstructPix2PixPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(in_channels=in_channels, out_channels=4, cross_attention_dim=32, **unet_layout)
    torch.manual_seed(seed)
    vae = tiny_vae()
    tokenizer = byte_tokenizer()
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(clip_config(tokenizer, hidden_size=32, num_hidden_layers=5))
    scheduler = EulerAncestralDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    return StableDiffusionInstructPix2PixPipeline(
        unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A saved four-level tiny InstructPix2Pix folder (diffusers layout)."""
    folder = tmp_path_factory.mktemp("tiny-ip2p")
    build_tiny_pipeline().save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_two_level_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-ip2p-2level")
    build_tiny_pipeline(TWO_LEVELS).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def segmenter(tiny_model_dir):
    from napari_editseg import EditSegmenter

    return EditSegmenter.from_pretrained(str(tiny_model_dir), device="cpu")


@pytest.fixture()
def picture():
    """A 45×60 RGB uint8 picture: a bright disc and a dark square on a textured background."""
    rng = np.random.default_rng(0)
    image = rng.integers(60, 120, size=(45, 60, 3)).astype(np.uint8)
    rows, cols = np.mgrid[:45, :60]
    image[(rows - 20) ** 2 + (cols - 18) ** 2 < 100] = (230, 40, 40)
    image[10:30, 38:54] = (20, 20, 200)
    return image


class CallCounter:
    """Counts forward calls of a module (a hook, removed on exit); the forward still runs."""

    def __init__(self, module):
        self.module, self.calls = module, 0

    def __enter__(self):
        self.handle = self.module.register_forward_pre_hook(self._count)
        return self

    def _count(self, *_):
        self.calls += 1

    def __exit__(self, *exc):
        self.handle.remove()


@pytest.fixture()
def count_calls():
    return CallCounter


@contextmanager
def never_runs(*modules):
    """Fail the test if any of ``modules`` runs inside the block: a request must be refused first."""
    def must_not_run(module, _inputs):
        raise AssertionError(f"{type(module).__name__} ran: the request was not refused first")

    handles = [module.register_forward_pre_hook(must_not_run) for module in modules]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


from tiny_flux import tiny_flux_dir  # noqa: E402,F401  (a session fixture: the tiny FLUX.1 Kontext folder)
from tiny_sdxl import tiny_cosxl_dir, tiny_sdxl_dir  # noqa: E402,F401  (SDXL / CosXL Edit fixtures)
