"""What each backbone costs at its published size: parameters, the layers "auto" captures, the
FLOPs of one segmentation's denoiser forward against the whole denoiser and a full edit, and
the memory estimate the guard checks — counted on the meta device, so nothing is downloaded,
allocated or run (torch's FlopCounterMode counts every matmul and convolution of the forward).

    python benchmarks/bench_backbones.py --doc docs/method.md --json benchmarks/results/backbones.json

Configs are the published ones (InstructPix2Pix; SDXL InstructPix2Pix 768 on the SDXL UNet; FLUX.1
Kontext [dev]), typed in from their model cards' config files; weights are random (never used).
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
from pathlib import Path

import torch
from docsection import publish, replace_section
from torch.utils.flop_counter import FlopCounterMode

from napari_editseg.core.settings import SegmentationSettings

META = torch.device("meta")


def instruct_pix2pix():
    from bench_latency import real_size_model

    return real_size_model(META, torch.float16)


def sdxl_instruct_pix2pix():
    """diffusers/sdxl-instructpix2pix-768: the SDXL UNet on 8 channels at 96 latents (768 px)."""
    from diffusers import (
        EulerDiscreteScheduler,
        StableDiffusionXLInstructPix2PixPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from napari_editseg.core.backbones.sdxl_instruct_pix2pix import SDXLInstructPix2Pix
    from napari_editseg.testing import byte_tokenizer

    with torch.device(META):
        unet = UNet2DConditionModel(
            sample_size=96, in_channels=8, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
            use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
            projection_class_embeddings_input_dim=2816,
        )
        vae = sd_vae(latent_channels=4, force_upcast=True)
        tokenizer = byte_tokenizer()
        ids = dict(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                   pad_token_id=tokenizer.pad_token_id, max_position_embeddings=77, vocab_size=49408)
        text_encoder = CLIPTextModel(CLIPTextConfig(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                                    num_attention_heads=12, hidden_act="quick_gelu", **ids))
        text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(
            hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
            projection_dim=1280, hidden_act="gelu", **ids))
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    pipe = StableDiffusionXLInstructPix2PixPipeline(
        vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tokenizer,
        tokenizer_2=byte_tokenizer(), unet=unet, scheduler=scheduler, add_watermarker=False,
    )
    return SDXLInstructPix2Pix(pipe=pipe, source="SDXL InstructPix2Pix (768)", device=META, dtype=torch.float16)


def sd_vae(latent_channels: int, **config):
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=latent_channels, layers_per_block=2,
        block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, **config,
    )


def flux_kontext():
    """black-forest-labs/FLUX.1-Kontext-dev: 19 double- and 38 single-stream blocks, T5-XXL, CLIP-L."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxKontextPipeline, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    from napari_editseg.core.backbones.flux_kontext import FluxKontext
    from napari_editseg.testing import byte_tokenizer, t5_tokenizer

    with torch.device(META):
        transformer = FluxTransformer2DModel(
            patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
            num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True,
            axes_dims_rope=(16, 56, 56),
        )
        vae = sd_vae(latent_channels=16, shift_factor=0.1159, scaling_factor=0.3611, use_quant_conv=False,
                     use_post_quant_conv=False)
        tokenizer = byte_tokenizer()
        text_encoder = CLIPTextModel(CLIPTextConfig(
            hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
            hidden_act="quick_gelu", bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id, max_position_embeddings=77, vocab_size=49408))
        text_encoder_2 = T5EncoderModel(T5Config(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24,
                                                 num_heads=64, feed_forward_proj="gated-gelu"))
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5,
                                                max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096)
    pipe = FluxKontextPipeline(scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                               text_encoder_2=text_encoder_2, tokenizer_2=t5_tokenizer(512), transformer=transformer)
    return FluxKontext(pipe=pipe, source="FLUX.1 Kontext [dev]", device=META, dtype=torch.bfloat16)


FAMILIES = {"InstructPix2Pix": instruct_pix2pix, "SDXL InstructPix2Pix": sdxl_instruct_pix2pix,
            "FLUX.1 Kontext [dev]": flux_kontext}


@contextlib.contextmanager
def autocast_off_on_meta():
    """torch.autocast has no meta backend; the capture turns it off around its softmax, which on
    meta tensors must be a no-op instead."""
    real = torch.autocast
    torch.autocast = lambda device_type, *a, **k: (contextlib.nullcontext() if device_type == "meta"
                                                   else real(device_type, *a, **k))
    try:
        yield
    finally:
        torch.autocast = real


def flops(run) -> float:
    with FlopCounterMode(display=False) as counter:
        run()
    return counter.get_total_flops()


def edit_rows_and_steps(model) -> tuple[int, int]:
    """A full edit with the pipeline's defaults: (denoiser rows per step, steps)."""
    parameters = inspect.signature(type(model.pipe).__call__).parameters
    steps = parameters["num_inference_steps"].default
    rows = 1 if "true_cfg_scale" in parameters else 3  # text and image guidance: 3 rows; Kontext: guidance-distilled
    return rows, steps


def measure(name: str, model) -> dict:
    for part in model.networks():
        part.to(model.dtype)
    layout = model.layout()
    settings = layout.resolve(SegmentationSettings())
    plan = layout.plan(settings)
    side = settings.resolution // model.vae_factor
    rows = 2  # the default relevance prior: the instruction and its baseline text
    latents = torch.zeros(rows, model.vae.config.latent_channels, side, side, device=META, dtype=model.dtype)
    with torch.no_grad(), autocast_off_on_meta():
        text = model.encode_text(["make the dog on the left red", "make the red"])
        t = torch.tensor(999.0 if not hasattr(model, "train_steps") else 1000.0, device=META)
        early = flops(lambda: model.forward(latents, latents, t, text, plan, True))
        whole_one = flops(lambda: model.forward(latents[:1], latents[:1], t, {k: v[:1] for k, v in text.items()},
                                                plan, False))
        pixels = torch.zeros(1, 3, settings.resolution, settings.resolution, device=META, dtype=model.dtype)
        encode = flops(lambda: model.encode_images(pixels))
    edit_rows, steps = edit_rows_and_steps(model)
    needs = model.memory_needs(settings, plan, (settings.resolution, settings.resolution), rows, 1)
    count = {part: sum(p.numel() for p in module.parameters()) for part, module in model.pipe.components.items()
             if isinstance(module, torch.nn.Module)}
    return {
        "family": model.family, "resolution": settings.resolution,
        "parameters_billion": {part: round(n / 1e9, 3) for part, n in count.items()},
        "weights_gib_16bit": round(sum(count.values()) * 2 / 2**30, 1),
        "prior": {"layers": len(plan.cross_layers), "sides": list(settings.prior_resolutions),
                  "attention_blocks": settings.attention_blocks, "image_tokens": settings.image_tokens},
        "affinity_side": settings.affinity_resolution, "feature_blocks": list(settings.feature_blocks),
        "stop_after": plan.stop_after, "blocks_run": layout.blocks.index(plan.stop_after) + 1,
        "blocks": len(layout.blocks),
        "tflop_segmentation_forward": round(early / 1e12, 2), "tflop_vae_encode": round(encode / 1e12, 2),
        "tflop_whole_denoiser_2_rows": round(2 * whole_one / 1e12, 2),
        "tflop_full_edit": round(edit_rows * steps * whole_one / 1e12, 1), "edit": f"{steps} steps x {edit_rows} rows",
        "memory_estimate_gib": round(sum(n.bytes for n in needs) / 2**30, 2),
    }


def write_doc(doc: Path, figures: dict) -> None:
    lines = ["<!-- measured:backbones:start -->",
             "Counted by `benchmarks/bench_backbones.py` on the meta device (published configs, default "
             "settings, the default relevance prior's two rows; FLOPs of matmuls and convolutions):", "",
             "| | InstructPix2Pix | SDXL InstructPix2Pix | FLUX.1 Kontext [dev] |", "|---|---|---|---|"]
    rows = [
        ("resolution (auto)", lambda f: f"{f['resolution']} px"),
        ("parameters (denoiser / all)", lambda f: "{:.2f} B / {:.2f} B".format(
            f["parameters_billion"][{"flux-kontext": "transformer"}.get(f["family"], "unet")],
            sum(f["parameters_billion"].values()))),
        ("weights in 16-bit", lambda f: f"{f['weights_gib_16bit']} GiB"),
        ("prior from", lambda f: f"{f['prior']['layers']} attention layers"
         + (f" of blocks {', '.join(b.split('.')[-1] for b in f['prior']['attention_blocks'])}"
            if f["prior"]["attention_blocks"] != "auto" else f" at sides {f['prior']['sides']}")),
        ("features", lambda f: ", ".join(f["feature_blocks"])),
        ("forward stops after", lambda f: f"{f['stop_after']} ({f['blocks_run']} of {f['blocks']} blocks)"),
        ("one segmentation's forward", lambda f: f"{f['tflop_segmentation_forward']} TFLOP"),
        ("the whole denoiser, same 2 rows", lambda f: f"{f['tflop_whole_denoiser_2_rows']} TFLOP"),
        ("VAE encode", lambda f: f"{f['tflop_vae_encode']} TFLOP"),
        ("a full edit (pipeline defaults)", lambda f: f"{f['tflop_full_edit']} TFLOP ({f['edit']})"),
        ("memory estimate (besides weights)", lambda f: f"{f['memory_estimate_gib']} GiB"),
    ]
    for label, cell in rows:
        lines.append(f"| {label} | " + " | ".join(cell(figures[name]) for name in FAMILIES) + " |")
    lines.append("<!-- measured:backbones:end -->")
    replace_section(doc, "backbones", "\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json")
    parser.add_argument("--doc")
    args = parser.parse_args()
    figures = {name: measure(name, build()) for name, build in FAMILIES.items()}
    publish(figures, args.json, args.doc, write_doc)


if __name__ == "__main__":
    main()
