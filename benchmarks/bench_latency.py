"""One step vs. a full edit, on the real-size InstructPix2Pix architecture (random weights).

    python benchmarks/bench_latency.py --json benchmarks/results/latency-cpu.json --repeats 3

Builds the published UNet (320/640/1280/1280, 8 input channels, cross-attention 768), SD VAE
and CLIP ViT-L/14 text encoder configs with random weights (no download; speed does not
depend on the weights) and measures, side by side in one run on one machine at 512×512:

  A  diffusers' StableDiffusionInstructPix2PixPipeline full edit: 20 steps, default guidance
     (3-way batch), VAE decode — what a user would otherwise run;
  B  EditSegmenter on a fresh image: set_image + segment;
  C  segment of a further expression on the same image (cached latents; the default relevance
     prior's baseline row kept from B), and C' the same with the attention prior (no baseline);
  D  segment_batch of 8 expressions, per expression;
  E  refine (re-threshold, and a click) — no UNet forward.

Times are medians over --repeats runs after a warm-up. Also peak memory of B and D, and the
memory after many consecutive segment calls (no growth expected). Writes --json, updates the
measured section of docs/performance.md for this device, and draws docs/images/latency-<device>.png.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import statistics
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import torch

ROOT = Path(__file__).resolve().parents[1]

from docsection import replace_section  # noqa: E402


def real_size_model(device: torch.device, dtype: torch.dtype):
    """InstructPix2Pix's published component configs, randomly initialised."""
    from diffusers import (
        AutoencoderKL,
        EulerAncestralDiscreteScheduler,
        StableDiffusionInstructPix2PixPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    from napari_editseg.core.backbones.instruct_pix2pix import InstructPix2Pix
    from napari_editseg.testing import byte_tokenizer  # no download; token ids do not change the cost

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=64, in_channels=8, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, cross_attention_dim=768, attention_head_dim=8,
    )
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=512,
        block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
    )
    tokenizer = byte_tokenizer()
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
        max_position_embeddings=77, hidden_act="quick_gelu", bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    ))
    scheduler = EulerAncestralDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    for part in (unet, vae, text_encoder):
        part.to(device=device, dtype=dtype).eval().requires_grad_(False)
    pipe = StableDiffusionInstructPix2PixPipeline(
        unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    return InstructPix2Pix(pipe=pipe, source="random real-size InstructPix2Pix", device=device, dtype=dtype)


class PeakMemory:
    """Peak memory while a block runs: CUDA allocator peak, or sampled process RSS on CPU."""

    def __init__(self, device: torch.device):
        self.device, self.peak = device, 0

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        else:
            self._stop = threading.Event()
            process = psutil.Process()
            self.peak = process.memory_info().rss

            def sample():
                while not self._stop.wait(0.01):
                    self.peak = max(self.peak, process.memory_info().rss)

            self._thread = threading.Thread(target=sample, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated()
        else:
            self._stop.set()
            self._thread.join()


def timed(fn, device, repeats: int):
    """Median seconds of ``repeats`` calls (after the caller's warm-up)."""
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    return (f"{cpu_name()}, {psutil.cpu_count(logical=True)} CPU threads "
            f"({torch.get_num_threads()} used by torch), {psutil.virtual_memory().total / 2**30:.0f} GiB, "
            f"torch {torch.__version__}")


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of B-E (median reported)")
    parser.add_argument("--repeats-full-edit", type=int, default=1, help="timed runs of A (minutes each on CPU)")
    parser.add_argument("--steps", type=int, default=20, help="denoising steps of the full edit A")
    parser.add_argument("--leak-calls", type=int, default=100, help="consecutive segment calls for the memory check")
    parser.add_argument("--json", help="write every figure here")
    parser.add_argument("--doc", default=str(ROOT / "docs" / "performance.md"), help="doc whose measured section "
                        "for this device is rewritten ('' to skip)")
    args = parser.parse_args(argv)

    from diffusers import StableDiffusionInstructPix2PixPipeline
    from diffusers.utils import logging as diffusers_logging

    from napari_editseg import EditSegmenter
    from napari_editseg.core.model import bf16_pays_off, choose_device, choose_dtype

    diffusers_logging.disable_progress_bar()
    device = choose_device(args.device)
    dtype, autocast = choose_dtype(args.dtype, device)
    if args.dtype == "auto" and bf16_pays_off(device, real_size_model(torch.device("meta"), dtype).unet):
        dtype = torch.bfloat16  # what the loader does with a real-size model on this CPU
    model = real_size_model(device, dtype)
    model.autocast = autocast
    segmenter = EditSegmenter(model)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (512, 512, 3), dtype=np.uint8) for _ in range(args.repeats + 2)]
    expressions = ["the dog on the left", "the red car", "the largest nucleus", "the woman's face", "the cup",
                   "the man in the blue shirt", "the tree behind the house", "the second bird from the right"]
    figures: dict = {"device": str(device), "dtype": str(dtype).replace("torch.", "") + (
                         f" under {str(autocast).replace('torch.', '')} autocast" if autocast else ""),
                     "machine": machine(device),
                     "unet_parameters": sum(p.numel() for p in model.unet.parameters())}

    with torch.inference_mode():
        # warm-up: one of each kind
        segmenter.set_image(images[-1])
        segmenter.segment(expressions[0])
        segmenter.segment_batch(expressions)

        counter = iter(range(10 ** 6))

        def fresh_image():
            segmenter.set_image(images[next(counter) % (len(images) - 1)])
            return segmenter.segment(expressions[1])

        with PeakMemory(device) as peak_b:
            figures["B"], figures["B_runs"] = timed(fresh_image, device, args.repeats)
        figures["B_peak_memory_bytes"] = peak_b.peak
        figures["C"], figures["C_runs"] = timed(lambda: segmenter.segment(expressions[2]), device, args.repeats)
        segmenter.segment(expressions[2], prior_source="attention")  # warm-up of this path
        figures["C_attention"], figures["C_attention_runs"] = timed(
            lambda: segmenter.segment(expressions[2], prior_source="attention"), device, args.repeats)
        figures["C_over_C_attention"] = figures["C"] / figures["C_attention"]
        with PeakMemory(device) as peak_d:
            total, runs = timed(lambda: segmenter.segment_batch(expressions), device, args.repeats)
        figures["D"], figures["D_runs"] = total / len(expressions), [t / len(expressions) for t in runs]
        figures["D_peak_memory_bytes"] = peak_d.peak
        result = segmenter.segment(expressions[3])
        figures["C_stage_timings"] = {k: round(v, 4) for k, v in result.timings.items()}
        thresholds = iter(np.linspace(0.3, 0.7, 10 * args.repeats + 10))
        figures["E"], _ = timed(lambda: segmenter.refine(result, mask_threshold=float(next(thresholds))), device,
                                10 * args.repeats)
        figures["E_click"], _ = timed(lambda: segmenter.refine(result, positive=[(100, 200)]), device,
                                      10 * args.repeats)

        # the early exit at work: the same forward without it
        figures["C_without_early_exit"], _ = timed(
            lambda: segmenter.forward([expressions[2]], early_exit=False), device, args.repeats)
        # would channels-last convolutions help? C with the UNet in that layout
        model.unet.to(memory_format=torch.channels_last)
        segmenter.segment(expressions[2])
        figures["C_channels_last"], _ = timed(lambda: segmenter.segment(expressions[2]), device, args.repeats)
        model.unet.to(memory_format=torch.contiguous_format)

        # memory over many consecutive calls (results dropped, as a user's loop would); a leak
        # grows steadily from one checkpoint to the next, allocator caching settles early
        gc.collect()
        process = psutil.Process()
        checkpoints = sorted({10, args.leak_calls // 4, args.leak_calls // 2, 3 * args.leak_calls // 4,
                              args.leak_calls} - {0})
        memory = {}
        for i in range(1, args.leak_calls + 1):
            segmenter.segment(expressions[i % len(expressions)])
            if i in checkpoints:
                gc.collect()
                memory[i] = torch.cuda.memory_allocated() if device.type == "cuda" else process.memory_info().rss
        figures["memory_by_calls_bytes"] = memory
        figures["memory_after_10_calls_bytes"], figures["memory_after_n_calls_bytes"] = memory[10], memory[
            args.leak_calls]
        figures["leak_calls"] = args.leak_calls

        pipe = StableDiffusionInstructPix2PixPipeline(
            vae=model.vae, text_encoder=model.text_encoder, tokenizer=model.tokenizer, unet=model.unet,
            scheduler=model.scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
        )
        pipe.set_progress_bar_config(disable=True)
        from PIL import Image

        picture = Image.fromarray(images[0])
        pipe("make the dog red", image=picture, num_inference_steps=1, output_type="np")  # warm-up
        figures["A"], figures["A_runs"] = timed(
            lambda: pipe("make the dog red", image=picture, num_inference_steps=args.steps, guidance_scale=7.5,
                         image_guidance_scale=1.5, output_type="np"),
            device, args.repeats_full_edit)
    figures["A_steps"] = args.steps
    for key in ("B", "C", "D"):
        figures[f"A_over_{key}"] = figures["A"] / figures[key]
    print(json.dumps({k: v for k, v in figures.items() if not k.endswith("_runs")}, indent=1))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(figures, indent=1))
    if args.doc:
        write_doc(Path(args.doc), figures)
    return figures


def mib(n: int) -> str:
    return f"{n / 2**20:,.0f} MiB"


def write_doc(doc: Path, f: dict) -> None:
    """Rewrite this device's section between markers in the performance doc, and its plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    kind = "gpu" if f["device"].startswith("cuda") else "cpu"
    plot = doc.parent / "images" / f"latency-{kind}.png"
    plot.parent.mkdir(parents=True, exist_ok=True)
    labels = ["A full edit", "B new image", "C next expression", "D batch of 8", "E refine"]
    values = [f["A"], f["B"], f["C"], f["D"], f["E"]]
    fig, ax = plt.subplots(figsize=(7, 3.2))
    bars = ax.barh(labels[::-1], values[::-1], color=["#888", "#4a7", "#4a7", "#4a7", "#47a"][::-1])
    ax.set_xscale("log")
    ax.set_xlabel("seconds per expression (log scale)")
    ax.set_title(f"{f['machine'][:70]}, {f['dtype']}", fontsize=8)
    for bar, value in zip(bars, values[::-1]):
        ax.text(value * 1.08, bar.get_y() + bar.get_height() / 2, f"{value:.3g} s", va="center", fontsize=8)
    ax.set_xlim(min(values) / 2, max(values) * 6)
    fig.tight_layout()
    fig.savefig(plot, dpi=120)
    plt.close(fig)

    growth = f["memory_after_n_calls_bytes"] - f["memory_after_10_calls_bytes"]
    section = f"""<!-- measured:{kind}:start -->
Measured {time.strftime('%Y-%m-%d')} on **{f['machine']}**, {f['dtype']}, 512×512, random weights
(UNet {f['unet_parameters'] / 1e6:.1f} M parameters). Medians after a warm-up.

| | what | seconds per expression | A / this |
|---|---|---|---|
| A | full edit, {f['A_steps']} steps, guidance (3-way batch), VAE decode | {f['A']:.3f} | 1 |
| B | `set_image` + `segment` on a fresh image | {f['B']:.3f} | {f['A_over_B']:.0f} |
| C | `segment`, further expression (cached latents and relevance baseline) | {f['C']:.3f} | **{f['A_over_C']:.0f}** |
| C' | the same, `prior_source="attention"` | {f['C_attention']:.3f} | {f['A'] / f['C_attention']:.0f} |
| D | `segment_batch` of 8, per expression | {f['D']:.3f} | {f['A_over_D']:.0f} |
| E | `refine` (re-threshold) | {f['E']:.4f} | {f['A'] / f['E']:,.0f} |
| E' | `refine` with a click | {f['E_click']:.4f} | |

- C with the default (relevance) prior takes {100 * f['C_over_C_attention']:.0f} % of C' (the attention prior's):
  one denoiser row each, the baseline text's row kept from the image's first expression.
- C without the early exit (whole UNet, same capture): {f['C_without_early_exit']:.3f} s; with the UNet
  in channels-last memory format (not the default): {f['C_channels_last']:.3f} s.
- C by stage: {', '.join(f'{k} {v:.3f} s' for k, v in f['C_stage_timings'].items() if k != 'encode_image')}
  (the image was encoded once by `set_image`, {f['C_stage_timings']['encode_image']:.2f} s).
- Peak memory: B {mib(f['B_peak_memory_bytes'])}, D {mib(f['D_peak_memory_bytes'])}
  ({'CUDA allocator peak' if kind == 'gpu' else 'process RSS, model included'}).
- Memory after 10 and after {f['leak_calls']} consecutive `segment` calls:
  {mib(f['memory_after_10_calls_bytes'])} → {mib(f['memory_after_n_calls_bytes'])} (growth {mib(growth)};
  after {', '.join(f'{n}: {mib(b)}' for n, b in f['memory_by_calls_bytes'].items())}).

![time per expression](images/latency-{kind}.png)
<!-- measured:{kind}:end -->"""
    replace_section(doc, kind, section)


if __name__ == "__main__":
    main()
