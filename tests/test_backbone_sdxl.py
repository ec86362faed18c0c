"""The SDXL InstructPix2Pix family (SDXL InstructPix2Pix and CosXL Edit) on tiny random-weight
models: one UNet forward equals the diffusers pipeline's first UNet call, and each thing SDXL
adds (two text encoders, pooled embedding, size conditioning, CosXL's latent scaling and EDM
schedule) reaches the UNet. Nothing here is mocked.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_editseg import PAPER, EditSegmenter
from napari_editseg.core.budget import MemoryBudgetError
from napari_editseg.core.image import model_size, to_model_input, to_rgb_float
from napari_editseg.testing import build_tiny_sdxl, never_runs, save_tiny_sdxl

MODELS = ["tiny_sdxl_dir", "tiny_cosxl_dir"]


@pytest.fixture(scope="module", params=MODELS)
def sdxl(request):
    folder = request.getfixturevalue(request.param)
    return folder, EditSegmenter.from_pretrained(str(folder), device="cpu")


def first_unet_call(folder, prompt: str, picture: np.ndarray, settings) -> torch.Tensor:
    """The diffusers pipeline's first UNet output for ``prompt`` on ``picture`` (no guidance)."""
    from diffusers import StableDiffusionXLInstructPix2PixPipeline

    pipe = StableDiffusionXLInstructPix2PixPipeline.from_pretrained(folder, add_watermarker=False)
    first = []
    handle = pipe.unet.register_forward_hook(lambda m, i, o: first.append(o[0]) if not first else None)
    size = model_size(*picture.shape[:2], settings.resolution, settings.size_multiple, settings.keep_aspect)
    try:
        pipe(prompt=prompt, image=to_model_input(to_rgb_float(picture), size), height=size[0], width=size[1],
             num_inference_steps=3, guidance_scale=1.0, generator=torch.Generator().manual_seed(settings.seed),
             output_type="latent")
    finally:
        handle.remove()
    return first[0]


@pytest.mark.parametrize("preset", [PAPER, {}], ids=["paper", "defaults"])
def test_one_unet_forward_equals_the_first_step_of_the_diffusers_pipeline(sdxl, picture, preset):
    """SDXL (Euler) and CosXL Edit (EDM, v-prediction, scaled image latents); the defaults' batch
    also holds the baseline-text row, which must not disturb the expression's row."""
    folder, segmenter = sdxl
    segmenter.set_image(picture)
    forward = segmenter.forward(["the red disc"], early_exit=False, **preset)
    expected = first_unet_call(folder, forward.instructions[0].text, picture, forward.settings)
    assert forward.noise_pred.shape == expected.shape
    torch.testing.assert_close(forward.noise_pred, expected, rtol=1e-4, atol=1e-5)


def test_both_tokenizers_give_the_expression_the_same_positions(tiny_sdxl_dir):
    """The prior reads token positions from the first tokenizer; SDXL concatenates the two
    encoders per position, so the second must split the text identically."""
    model = EditSegmenter.from_pretrained(str(tiny_sdxl_dir), device="cpu").model
    text = "make the red disc on the left blue"
    one, two = (t(text, padding="max_length", max_length=model.max_tokens).input_ids
                for t in (model.pipe.tokenizer, model.pipe.tokenizer_2))
    assert one == two


def test_pooled_embedding_and_size_conditioning_reach_the_unet(sdxl, picture):
    """Each row's pooled embedding (the second encoder's projection) and the time ids
    (original size, crop, target size = the model input's size) enter the UNet's added embedding."""
    _, segmenter = sdxl
    unet, pipe = segmenter.model.unet, segmenter.model.pipe
    seen = {}
    handles = [unet.add_time_proj.register_forward_pre_hook(lambda m, a: seen.__setitem__("time_ids", a[0])),
               unet.add_embedding.register_forward_pre_hook(lambda m, a: seen.__setitem__("embedding", a[0]))]
    try:
        segmenter.set_image(picture)
        forward = segmenter.forward(["the red disc", "the blue square"], prior_source="attention")
    finally:
        for handle in handles:
            handle.remove()
    h, w = (side * segmenter.model.vae_factor for side in forward.latent_grid)
    assert seen["time_ids"].reshape(2, 6).tolist() == [[h, w, 0, 0, h, w]] * 2
    _, _, pooled, _ = pipe.encode_prompt([i.text for i in forward.instructions], do_classifier_free_guidance=False)
    assert not torch.allclose(pooled[0], pooled[1])
    torch.testing.assert_close(seen["embedding"][:, :pooled.shape[1]], pooled)


def test_the_pooled_embedding_changes_the_noise_prediction(tiny_sdxl_dir, picture):
    """The same hidden states with another text's pooled embedding predict other noise."""
    segmenter = EditSegmenter.from_pretrained(str(tiny_sdxl_dir), device="cpu")
    model = segmenter.model
    settings = segmenter.resolve_settings()
    plan = segmenter.layout.plan(settings)
    segmenter.set_image(picture)
    image = next(iter(segmenter.image_latents().values()))
    with torch.inference_mode():
        text = model.encode_text(["make the red disc red", "make the blue square red"])
        noisy, t = model.noisy_latents(settings, image, 1)
        args = (noisy, image, t)
        own, _ = model.forward(*args, {k: v[:1] for k, v in text.items()}, plan, early_exit=False)
        swapped = {"encoder_hidden_states": text["encoder_hidden_states"][:1], "text_embeds": text["text_embeds"][1:]}
        other, _ = model.forward(*args, swapped, plan, early_exit=False)
    assert (own - other).abs().max() > 1e-3


def test_cosxl_scales_the_image_latents(tiny_cosxl_dir, picture):
    """CosXL Edit conditions on latents × the VAE's scaling factor; without it the UNet's
    prediction moves far beyond the parity test's tolerance (so a skipped scaling fails there)."""
    segmenter = EditSegmenter.from_pretrained(str(tiny_cosxl_dir), device="cpu")
    model = segmenter.model
    assert model.cosxl
    pixels = to_model_input(to_rgb_float(picture), (32, 48))
    with torch.inference_mode():
        scaled = model.encode_images(pixels)
        model.pipe.is_cosxl_edit = False
        try:
            plain = model.encode_images(pixels)
            segmenter.set_image(picture)
            unscaled = segmenter.forward(["the red disc"], early_exit=False).noise_pred
        finally:
            model.pipe.is_cosxl_edit = True
    torch.testing.assert_close(scaled, plain * model.vae.config.scaling_factor)
    segmenter.set_image(picture)
    assert (segmenter.forward(["the red disc"], early_exit=False).noise_pred - unscaled).abs().max() > 1e-2


def test_an_edm_model_saved_without_the_cosxl_flag_is_named_in_a_warning(tmp_path, recwarn):
    """CosXL converted without registering is_cosxl_edit would run with unscaled latents: say so
    (the files cannot tell it apart from an EDM SDXL editor that does not scale, so not refused)."""
    build_tiny_sdxl(cosxl=True).save_pretrained(tmp_path)  # the flag is lost: diffusers does not save it
    with pytest.warns(UserWarning, match="does not set is_cosxl_edit.*register_to_config"):
        segmenter = EditSegmenter.from_pretrained(str(tmp_path), device="cpu")
    assert not segmenter.model.cosxl


def test_a_cosxl_folder_with_the_flag_and_an_sdxl_one_load_without_warnings(tiny_cosxl_dir, tiny_sdxl_dir):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        for folder in (tiny_cosxl_dir, tiny_sdxl_dir):
            EditSegmenter.from_pretrained(str(folder), device="cpu")


def test_the_edm_timestep_setting_counts_down_the_noise_levels(tiny_cosxl_dir, picture):
    """On CosXL's EDM schedule ``timestep`` is an int like on a DDPM one: auto is the largest
    noise level; a lower one reaches the UNet as that level's preconditioned time."""
    segmenter = EditSegmenter.from_pretrained(str(tiny_cosxl_dir), device="cpu")
    scheduler = segmenter.model.scheduler
    last = scheduler.config.num_train_timesteps - 1
    assert segmenter.resolve_settings().timestep == last
    with pytest.raises(ValueError, match=f"'timestep'={last + 1}: must lie in \\[0, {last}\\]"):
        segmenter.resolve_settings(timestep=last + 1)
    seen = []
    handle = segmenter.model.unet.register_forward_pre_hook(lambda m, a: seen.append(float(a[1])))
    try:
        segmenter.set_image(picture)
        for timestep in (last, 600):
            segmenter.forward(["the red disc"], timestep=timestep, early_exit=False, prior_source="attention")
    finally:
        handle.remove()
    reference = type(scheduler).from_config(scheduler.config)
    reference.set_timesteps(last + 1)
    sigma_max = scheduler.config.sigma_max
    assert seen[0] == pytest.approx(0.25 * np.log(sigma_max))
    assert seen[1] == pytest.approx(float(reference.timesteps[last - 600])) and seen[1] < seen[0]


def test_a_four_channel_sdxl_is_refused_in_one_line(tmp_path):
    save_tiny_sdxl(tmp_path, in_channels=4)
    with pytest.raises(ValueError, match="4 input channels, an editing model takes 8") as info:
        EditSegmenter.from_pretrained(str(tmp_path), device="cpu")
    assert "\n" not in str(info.value)


def test_tokenizers_that_split_text_differently_are_refused(tiny_sdxl_dir):
    """A second tokenizer with one merge ("t h") moves every later token of "the …"."""
    from transformers import CLIPTokenizer

    from napari_editseg.core.backbones.sdxl_instruct_pix2pix import SDXLInstructPix2Pix
    from napari_editseg.testing import byte_tokenizer

    plain = byte_tokenizer()
    vocab = dict(plain.get_vocab())
    vocab.update({"th": len(vocab), "th</w>": len(vocab) + 1})
    merging = CLIPTokenizer(vocab=vocab, merges=[("t", "h")], model_max_length=77)
    pipe = build_tiny_sdxl()
    pipe.tokenizer_2 = merging
    model = SDXLInstructPix2Pix(pipe=pipe, source="merging", device=torch.device("cpu"), dtype=torch.float32)
    with pytest.raises(ValueError, match="two tokenizers split text differently") as info:
        model.check()
    assert "\n" not in str(info.value)


def test_a_resolution_that_cannot_fit_is_refused_before_anything_large_exists(tiny_sdxl_dir, picture):
    """The memory estimate reads SDXL's UNet config (tuple transformer depths and all) and refuses
    resolution=4096 before the VAE or UNet runs."""
    segmenter = EditSegmenter.from_pretrained(str(tiny_sdxl_dir), device="cpu")
    segmenter.set_image(picture)
    model = segmenter.model

    refused = pytest.raises(MemoryBudgetError, match="lower affinity_resolution .now 1024. or resolution .now 4096.")
    with never_runs(model.unet, model.vae.encoder), refused as info:
        segmenter.segment("the disc", resolution=4096)
    assert "\n" not in str(info.value)
    assert segmenter.segment("the disc").mask.shape == picture.shape[:2]


@pytest.mark.parametrize("folder", MODELS)
def test_float16_image_latents_equal_the_pipelines(folder, picture, request):
    """In float16 a VAE with ``force_upcast`` encodes in float32 as the pipeline does (float16
    overflows on real images), then CosXL scales the float16 latents: our latents equal the
    pipeline's own ``prepare_image_latents`` bit for bit."""
    from diffusers import StableDiffusionXLInstructPix2PixPipeline

    folder = request.getfixturevalue(folder)
    model = EditSegmenter.from_pretrained(str(folder), device="cpu", dtype="float16").model
    assert model.vae.config.force_upcast and model.vae.dtype == torch.float32 and model.unet.dtype == torch.float16
    pipe = StableDiffusionXLInstructPix2PixPipeline.from_pretrained(folder, add_watermarker=False,
                                                                    torch_dtype=torch.float16)
    pixels = to_model_input(to_rgb_float(picture), (32, 48)).to(torch.float16)
    with torch.inference_mode():
        ours = model.encode_images(pixels)
        theirs = pipe.prepare_image_latents(pixels, 1, 1, torch.float16, torch.device("cpu"), False)
    assert ours.dtype == theirs.dtype == torch.float16
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
