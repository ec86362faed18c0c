"""A tiny random-weight FLUX.1 Kontext pipeline, built offline from configs (no hub), saved with
``save_pretrained`` and loaded through the same path users take.

Same architecture as FLUX.1 Kontext [dev] (double- and single-stream blocks, guidance embedding,
2×2 latent packing, a T5 and a CLIP text encoder), only narrow: 2 + 2 blocks of 2 heads × 16.
"""

from __future__ import annotations

import string

import pytest
import torch
from conftest import byte_tokenizer, clip_config, tiny_vae

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


def build_tiny_flux_kontext(seed: int = 0, in_channels: int = 16):
    """``in_channels`` other than 4 × the VAE's latent channels makes a model that is not Kontext-style."""
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


@pytest.fixture(scope="session")
def tiny_flux_dir(tmp_path_factory):
    """A saved tiny FLUX.1 Kontext folder (diffusers layout)."""
    folder = tmp_path_factory.mktemp("tiny-flux-kontext")
    build_tiny_flux_kontext().save_pretrained(folder)
    return folder
