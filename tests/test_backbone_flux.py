"""FLUX.1 Kontext behind the backbone seam, on a tiny random-weight Kontext pipeline saved locally.

Parity with the diffusers pipeline's first transformer call (with capture installed), the
captured probabilities against a direct computation from the block's own q and k, each
transformer setting reaching its stage, the refusals, and the memory guard.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers.models.embeddings import apply_rotary_emb

from napari_editseg import PAPER, EditSegmenter
from napari_editseg.core.budget import MemoryBudgetError
from napari_editseg.core.image import model_size, to_model_input, to_rgb_float

SMALL = {"resolution": 64}


@pytest.fixture(scope="module")
def flux(tiny_flux_dir):
    return EditSegmenter.from_pretrained(str(tiny_flux_dir), device="cpu", **SMALL)


@pytest.mark.parametrize("preset", [PAPER, {}], ids=["paper", "defaults"])
def test_one_forward_equals_the_first_transformer_call_of_the_kontext_pipeline(flux, tiny_flux_dir, picture,
                                                                               preset):
    """With the capturing processor installed on the attention blocks, the whole forward's noise
    prediction for the target tokens equals the pipeline's (the defaults' batch also holds a
    baseline-text row)."""
    from diffusers import FluxKontextPipeline

    flux.set_image(picture)
    forward = flux.forward(["the red disc"], early_exit=False, **preset)
    assert forward.store.cross and forward.store.self_count, "the capture was installed"
    ours = forward.noise_pred

    pipe = FluxKontextPipeline.from_pretrained(tiny_flux_dir)
    first_call = []
    handle = pipe.transformer.register_forward_hook(lambda m, i, o: first_call.append(o[0]) if not first_call else None)
    height, width = model_size(*picture.shape[:2], 64, 4, True)
    image = (to_model_input(to_rgb_float(picture), (height, width)) + 1) / 2
    pipe(
        image=image, prompt=forward.instructions[0].text, height=height, width=width, max_area=height * width,
        _auto_resize=False, num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="latent",
        max_sequence_length=flux.model.max_tokens,
    )
    handle.remove()
    n = (height // 4) * (width // 4)
    theirs = pipe._unpack_latents(first_call[0][:, :n], height, width, pipe.vae_scale_factor)
    assert ours.shape == theirs.shape == (1, 4, height // 2, width // 2)
    print(f"max abs difference to the pipeline: {(ours - theirs).abs().max().item():.2e}")
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


def _qk_recorder(attn):
    """Forward hooks keeping the outputs of one attention module's q/k projections."""
    seen = {}
    names = ["to_q", "to_k"] + (["add_q_proj", "add_k_proj"] if attn.added_kv_proj_dim is not None else [])
    handles = [getattr(attn, name).register_forward_hook(lambda m, i, o, n=name: seen.__setitem__(n, o))
               for name in names]
    return seen, handles


@pytest.mark.parametrize("block", ["transformer_blocks.0", "single_transformer_blocks.1"])
@pytest.mark.parametrize("image_tokens", ["target", "reference"])
def test_captured_maps_equal_softmax_of_the_blocks_own_q_and_k(flux, picture, block, image_tokens):
    """store.cross and the affinity against a float64 softmax recomputed from the projections'
    outputs: the image→text columns of the chosen image's rows, and the softmax over that
    image's own keys alone, each averaged over heads."""
    transformer = flux.model.transformer
    attn = dict(transformer.named_modules())[f"{block}.attn"]
    seen, handles = _qk_recorder(attn)
    rope = []
    handles.append(transformer.pos_embed.register_forward_hook(lambda m, i, o: rope.append(o)))
    flux.set_image(picture)
    try:
        forward = flux.forward(["the red disc", "the blue square"], prior_source="attention",
                               attention_blocks=(block,), image_tokens=image_tokens)
    finally:
        for handle in handles:
            handle.remove()
    h, w = forward.latent_grid
    n = (h // 2) * (w // 2)
    text = forward.store.cross[f"{block}.attn"].shape[-1]

    def heads(t, norm):
        return norm(t.unflatten(-1, (attn.heads, attn.head_dim))).double()  # the model's own RMSNorm, float32

    with torch.no_grad():
        q, k = heads(seen["to_q"], attn.norm_q), heads(seen["to_k"], attn.norm_k)
        if "add_q_proj" in seen:  # double-stream: the text stream's own projections come first
            q = torch.cat([heads(seen["add_q_proj"], attn.norm_added_q), q], dim=1)
            k = torch.cat([heads(seen["add_k_proj"], attn.norm_added_k), k], dim=1)
        cos, sin = (r.double() for r in rope[0])
        q, k = apply_rotary_emb(q, (cos, sin), sequence_dim=1), apply_rotary_emb(k, (cos, sin), sequence_dim=1)
        assert q.shape[1] == text + 2 * n
        start = text + (0 if image_tokens == "target" else n)
        rows = slice(start, start + n)
        scores = torch.einsum("bqhd,bkhd->bhqk", q[:, rows], k) / attn.head_dim ** 0.5
        cross = scores.softmax(dim=-1)[..., :text].mean(dim=1)
        affinity = scores[..., rows].softmax(dim=-1).mean(dim=1)
    torch.testing.assert_close(forward.store.cross[f"{block}.attn"], cross.float(), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(forward.store.affinity, affinity.float(), rtol=1e-4, atol=1e-6)


def test_image_tokens_choose_whose_queries_are_read(flux, picture):
    flux.set_image(picture)
    assert flux.resolve_settings().image_tokens == "reference"
    target = flux.forward(["the red disc"], prior_source="attention", image_tokens="target")
    reference = flux.forward(["the red disc"], prior_source="attention")
    name = reference.plan.cross_layers[0]
    assert reference.plan.image_tokens == "reference" and target.plan.image_tokens == "target"
    assert not torch.allclose(target.store.cross[name], reference.store.cross[name], atol=1e-4)
    assert not torch.allclose(target.store.affinity, reference.store.affinity, atol=1e-4)
    block = reference.plan.feature_modules[0]
    assert not torch.allclose(target.store.features[block], reference.store.features[block], atol=1e-4)


def test_attention_blocks_choose_the_maps_and_move_the_early_exit(flux, picture, count_calls):
    blocks = dict(flux.model.transformer.named_modules())
    flux.set_image(picture)
    auto = flux.resolve_settings()
    assert auto.attention_blocks == ("transformer_blocks.1",) and auto.feature_blocks == ("transformer_blocks.1",)
    with count_calls(blocks["transformer_blocks.1"]) as second, count_calls(blocks["single_transformer_blocks.0"]) \
            as single:
        first = flux.forward(["the red disc"], prior_source="attention", attention_blocks=("transformer_blocks.0",))
    assert first.plan.stop_after == "transformer_blocks.0" and (second.calls, single.calls) == (0, 0)
    with count_calls(blocks["single_transformer_blocks.0"]) as single, \
            count_calls(blocks["single_transformer_blocks.1"]) as last:
        late = flux.forward(["the red disc"], prior_source="attention",
                            attention_blocks=("single_transformer_blocks.0",))
    assert late.plan.stop_after == "single_transformer_blocks.0" and (single.calls, last.calls) == (1, 0)
    assert late.noise_pred is None
    a = first.store.cross["transformer_blocks.0.attn"]
    b = late.store.cross["single_transformer_blocks.0.attn"]
    assert a.shape == b.shape and not torch.allclose(a, b, atol=1e-4)
    assert not torch.allclose(first.store.affinity, late.store.affinity, atol=1e-4)
    # two blocks: both maps kept, the affinity is their mean
    both = flux.forward(["the red disc"], prior_source="attention",
                        attention_blocks=("transformer_blocks.0", "single_transformer_blocks.0"))
    assert set(both.store.cross) == {"transformer_blocks.0.attn", "single_transformer_blocks.0.attn"}
    torch.testing.assert_close(both.store.affinity, (first.store.affinity + late.store.affinity) / 2)


def test_feature_blocks_are_the_chosen_images_rows_of_the_blocks_output(flux, picture):
    name = "single_transformer_blocks.1"
    block = dict(flux.model.transformer.named_modules())[name]
    outputs = []
    handle = block.register_forward_hook(lambda m, i, o: outputs.append(o[1]))
    flux.set_image(picture)
    try:
        forward = flux.forward(["the red disc"], prior_source="attention", feature_blocks=(name,))
    finally:
        handle.remove()
    assert forward.plan.stop_after == name  # features later than the attention block move the exit
    h, w = forward.latent_grid
    n = (h // 2) * (w // 2)
    expected = outputs[0][:, n:].transpose(1, 2).reshape(1, -1, h // 2, w // 2)  # reference rows
    torch.testing.assert_close(forward.store.features[name], expected)
    auto = flux.segment("the red disc", prior_source="attention")
    chosen = flux.segment("the red disc", prior_source="attention", feature_blocks=(name,))
    assert not np.allclose(auto.features, chosen.features)


@pytest.mark.parametrize("overrides, words", [
    ({"attention_blocks": ("transformer_blocks.7",)}, "'attention_blocks'.*not a block of this transformer"),
    ({"feature_blocks": ("up_blocks.1",)}, "'feature_blocks'.*not a block"),
    ({"prior_layers": "decoder"}, "no decoder"),
    ({"prior_resolutions": (8,)}, "'prior_resolutions'.*token grid.*16"),
    ({"prior_resolutions": (16, 8)}, "'prior_resolutions'"),
    ({"affinity_resolution": 32}, "'affinity_resolution'.*token grid.*16"),
    ({"size_multiple": 6}, "'size_multiple'.*multiple of 4"),
    ({"timestep": 1001}, r"'timestep'.*\[0, 1000\]"),
])
def test_settings_this_transformer_cannot_take_are_refused_in_one_line(flux, overrides, words):
    with pytest.raises(ValueError, match=words) as refused:
        flux.resolve_settings(**overrides)
    assert "\n" not in str(refused.value)


def test_a_later_timestep_noises_the_image_latents(flux, picture):
    flux.set_image(picture)
    latents = flux.image_latents()[next(iter(flux.image_latents()))]
    settings = flux.resolve_settings(timestep=250)
    noisy, t = flux.model.noisy_latents(settings, latents, 1)
    first, _ = flux.model.noisy_latents(flux.resolve_settings(), latents, 1)  # pure noise at t = 1000
    assert float(t) == 250
    torch.testing.assert_close(noisy, 0.75 * latents + 0.25 * first)
    a = flux.forward(["the red disc"], prior_source="attention")
    b = flux.forward(["the red disc"], prior_source="attention", timestep=250)
    name = a.plan.cross_layers[0]
    assert not torch.allclose(a.store.cross[name], b.store.cross[name], atol=1e-4)


def test_a_transformer_that_takes_extra_channels_is_refused(tmp_path):
    from napari_editseg.testing import build_tiny_flux_kontext

    build_tiny_flux_kontext(in_channels=32).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="not a Kontext-style editing model.*32 input channels") as refused:
        EditSegmenter.from_pretrained(str(tmp_path), device="cpu")
    assert "\n" not in str(refused.value)


def test_a_huge_resolution_is_refused_before_anything_large_exists(flux, picture):
    flux.set_image(picture)
    with pytest.raises(MemoryBudgetError, match="joint-attention maps.*lower resolution"):
        flux.forward(["the red disc"], resolution=8192)

    def total(resolution: int, size: tuple[int, int]) -> int:
        settings = flux.resolve_settings(resolution=resolution)
        return sum(n.bytes for n in flux.model.memory_needs(settings, flux.layout.plan(settings), size, 2, 1))

    assert total(128, (96, 128)) > 4 * total(64, (48, 64))  # twice the side: 4x the tokens, 16x the N×N maps


def test_an_attention_processor_of_another_kind_is_refused_and_left_in_place(flux, picture):
    """A processor the capture does not mirror (an IP-adapter's, a user's own) would make the
    captured maps differ from what the block computes: refused in one line, nothing replaced."""
    from diffusers.models.transformers.transformer_flux import FluxAttnProcessor

    class OwnProcessor(FluxAttnProcessor):
        pass

    flux.set_image(picture)
    block = flux.resolve_settings().attention_blocks[0]
    attn = dict(flux.model.transformer.named_modules())[f"{block}.attn"]
    original, own = attn.processor, OwnProcessor()
    attn.set_processor(own)
    try:
        with pytest.raises(ValueError, match="not FluxAttnProcessor") as refused:
            flux.forward(["the red disc"])
        assert "\n" not in str(refused.value) and attn.processor is own
    finally:
        attn.set_processor(original)
    assert flux.segment("the red disc").mask.shape == picture.shape[:2]
