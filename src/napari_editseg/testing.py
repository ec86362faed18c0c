"""Tiny random-weight editing models of every registered family, for tests, benchmarks and plugins.

Built the way diffusers' pipeline tests build theirs (``get_dummy_components``: narrow networks
with fixed seeds, a tokenizer that needs no download), saved with ``save_pretrained`` and loaded
through the same ``from_pretrained`` path users take. A plugin that builds on napari-editseg can
test against these in well under a second per forward, offline::

    from napari_editseg import EditSegmenter
    from napari_editseg.testing import build_tiny_pipeline, tiny_picture

    build_tiny_pipeline().save_pretrained(folder)
    segmenter = EditSegmenter.from_pretrained(str(folder), device="cpu")
    segmenter.set_image(tiny_picture())

Nothing here is mocked: a segmentation on these models runs a real denoiser forward. The
helpers that count or forbid module calls (:class:`CallCounter`, :func:`never_runs`,
:class:`RowCounter`) only observe it. Needs diffusers and transformers (the package's own
dependencies), not pytest.
"""

from __future__ import annotations

import string
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch


def tiny_picture() -> np.ndarray:
    """A 45×60 RGB uint8 picture: a bright red disc and a dark blue square on a textured background."""
    rng = np.random.default_rng(0)
    image = rng.integers(60, 120, size=(45, 60, 3)).astype(np.uint8)
    rows, cols = np.mgrid[:45, :60]
    image[(rows - 20) ** 2 + (cols - 18) ** 2 < 100] = (230, 40, 40)
    image[10:30, 38:54] = (20, 20, 200)
    return image


# -- tokenizers and shared parts ----------------------------------------------------------
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


T5_WORDS = ("make", "the", "red", "a", "blue", "disc", "square", "green", "dog", "on", "left", "right")


def t5_tokenizer(model_max_length: int = 64):
    """A T5 tokenizer with no download: a Unigram model over a few whole words and single characters
    behind T5's Metaspace pre-tokenizer and ``</s>`` suffix, so words keep their tokens in any context."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import T5TokenizerFast

    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -3.0)]
    vocab += [("▁" + word, -1.0) for word in T5_WORDS]
    vocab += [(c, -5.0) for c in string.ascii_lowercase + string.digits + string.punctuation]
    model = Tokenizer(models.Unigram(vocab, unk_id=2, byte_fallback=False))
    model.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    model.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    model.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                         special_tokens=[("</s>", 1)])
    return T5TokenizerFast(tokenizer_object=model, eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
                           model_max_length=model_max_length, extra_ids=0)


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


# -- InstructPix2Pix ------------------------------------------------------------------------
# Four levels like InstructPix2Pix (cross-attention in the three finest, a plain deepest block),
# so that sides 4/8/16 of a 16-latent play the roles of 16/32/64.
FOUR_LEVELS = dict(
    block_out_channels=(16, 16, 32, 32),
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    layers_per_block=1,
    sample_size=16,
    norm_num_groups=8,
    attention_head_dim=2,
)
# The two-level denoiser of diffusers' own InstructPix2Pix tests.
TWO_LEVELS = dict(
    block_out_channels=(32, 64),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
    layers_per_block=2,
    sample_size=32,
)


def build_tiny_pipeline(unet_layout: dict = FOUR_LEVELS, in_channels: int = 8, seed: int = 0):
    """A StableDiffusionInstructPix2PixPipeline; ``in_channels`` other than 8 makes one that is not an editor."""
    from diffusers import EulerAncestralDiscreteScheduler, StableDiffusionInstructPix2PixPipeline, UNet2DConditionModel
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


# -- SDXL InstructPix2Pix and CosXL Edit ------------------------------------------------------
TIME_EMBED = 8  # addition_time_embed_dim: six micro-conditioning numbers of 8 each
TEXT_WIDTH = 16  # each text encoder's width; the cross_attention_dim is their sum
PROJECTION = 16  # the second encoder's pooled projection


def build_tiny_sdxl(cosxl: bool = False, in_channels: int = 8, seed: int = 0):
    """An SDXL InstructPix2Pix pipeline as diffusers' SDXL instruct-pix2pix tests build theirs (two CLIP
    text encoders, a ``text_time`` denoiser), with three levels so that the "auto" settings resolve as
    on the real SDXL; ``cosxl``: CosXL Edit's EDM v-prediction schedule and latent scaling."""
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
    return Path(folder)


# -- FLUX.1 Kontext ---------------------------------------------------------------------------
def build_tiny_flux_kontext(seed: int = 0, in_channels: int = 16):
    """FLUX.1 Kontext [dev]'s architecture (double- and single-stream blocks, guidance embedding, 2×2
    latent packing, a T5 and a CLIP text encoder), only narrow: 2 + 2 blocks of 2 heads × 16.
    ``in_channels`` other than 4 × the VAE's latent channels makes a model that is not Kontext-style."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxKontextPipeline, FluxTransformer2DModel
    from transformers import CLIPTextModel, T5Config, T5EncoderModel

    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=in_channels, out_channels=16, num_layers=2, num_single_layers=2,
        attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32,
        guidance_embeds=True, axes_dims_rope=(4, 6, 6),
    )
    torch.manual_seed(seed)
    vae = tiny_vae(shift_factor=0.0609, scaling_factor=1.5035, use_quant_conv=False, use_post_quant_conv=False)
    clip_tokenizer = byte_tokenizer()
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(clip_config(clip_tokenizer, hidden_size=32, num_hidden_layers=2))
    tokenizer_2 = t5_tokenizer()
    torch.manual_seed(seed)
    text_encoder_2 = T5EncoderModel(T5Config(
        vocab_size=len(tokenizer_2), d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
    ))
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5,
                                                max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096)
    return FluxKontextPipeline(
        scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=clip_tokenizer,
        text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2, transformer=transformer,
    )


# -- observing a forward ---------------------------------------------------------------------
class CallCounter:
    """Counts forward calls of a module (a hook, removed on exit); the forward still runs."""

    def __init__(self, module: torch.nn.Module):
        self.module, self.calls = module, 0

    def __enter__(self) -> "CallCounter":
        self.handle = self.module.register_forward_pre_hook(self._count)
        return self

    def _count(self, *_: Any) -> None:
        self.calls += 1

    def __exit__(self, *exc: Any) -> None:
        self.handle.remove()


class RowCounter(CallCounter):
    """Counts a denoiser's forward calls and the batch rows they run (``rows``): what one
    segmentation costs, whatever the family's keyword for its input is."""

    def __init__(self, module: torch.nn.Module):
        super().__init__(module)
        self.rows = 0

    def __enter__(self) -> "RowCounter":
        self.handle = self.module.register_forward_pre_hook(self._count_rows, with_kwargs=True)
        return self

    def _count_rows(self, _module: Any, args: tuple, kwargs: dict) -> None:
        self.calls += 1
        sample = args[0] if args else kwargs.get("sample", kwargs.get("hidden_states"))
        self.rows += int(sample.shape[0])


@contextmanager
def never_runs(*modules: torch.nn.Module) -> Iterator[None]:
    """Fail (AssertionError) if any of ``modules`` runs inside the block: a request must be refused first."""
    def must_not_run(module, _inputs):
        raise AssertionError(f"{type(module).__name__} ran: the request was not refused first")

    handles = [module.register_forward_pre_hook(must_not_run) for module in modules]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
