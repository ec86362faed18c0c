"""Train a tiny InstructPix2Pix-style editing model on the shapes world.

    python benchmarks/shapes_world/train.py --out benchmarks/shapes_world/checkpoint

1. an AutoencoderKL is trained on world images first (a random VAE hides colour in tiny
   latent differences, so a UNet would learn only to copy), and its ``scaling_factor`` is
   set so that the scaled latents have unit variance, as Stable Diffusion's are;
2. a word-level CLIP tokenizer (every vocabulary word one token) and a small CLIP text
   encoder;
3. a UNet2DConditionModel with 8 input channels, trained jointly with the text encoder on
   the InstructPix2Pix objective: noise the target's scaled latents at a uniform DDPM
   timestep, concatenate the source image's *unscaled* latents, predict the noise;
   5 % of captions and 5 % of source images are dropped (classifier-free guidance).
   AdamW with warm-up and cosine decay; an exponential moving average of the weights is
   what gets saved.

The result is saved with ``StableDiffusionInstructPix2PixPipeline.save_pretrained`` (fp16
safetensors), so ``EditSegmenter.from_pretrained(folder)`` loads it like any checkpoint.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from napari_editseg.shapes_world import WORDS, make_sample

IMAGE_SIZE = 64
MAX_TOKENS = 16
TRAIN_SEEDS = 0  # training scenes use seeds from here; evaluation uses EVAL_SEEDS and up
EVAL_SEEDS = 10_000_000


def word_tokenizer(words=WORDS, max_tokens: int = MAX_TOKENS):
    """A CLIPTokenizer in which every word of the world is a single token."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    bpe = Tokenizer(models.BPE(end_of_word_suffix="</w>"))
    bpe.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.BpeTrainer(vocab_size=10_000, end_of_word_suffix="</w>", show_progress=False,
                                  initial_alphabet=list(bytes_to_unicode().values()))
    bpe.train_from_iterator([" ".join(words)], trainer)
    model = json.loads(bpe.to_str())["model"]
    vocab = dict(model["vocab"])
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    merges = [tuple(m.split()) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=max_tokens)
    for word in words:
        assert len(tokenizer(word, add_special_tokens=False).input_ids) == 1, word
    return tokenizer


def build_models(tokenizer, seed: int):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(16, 32, 32), layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        norm_num_groups=16, sample_size=IMAGE_SIZE,
    )
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=MAX_TOKENS, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    ))
    # InstructPix2Pix's layout at a quarter of the width and a 16x16 latent:
    # cross-attention in the three finer levels, a plain deepest level.
    unet = UNet2DConditionModel(
        sample_size=IMAGE_SIZE // 4, in_channels=8, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64, 64, 64), cross_attention_dim=64, attention_head_dim=4,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    )
    return vae, text_encoder, unet


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 N×H×W×3 → float N×3×H×W in [-1, 1]."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def make_data(n: int, start: int):
    samples = [make_sample(start + i, IMAGE_SIZE) for i in range(n)]
    source = np.stack([s.image for s in samples])
    target = np.stack([s.target for s in samples])
    return source, target, [s.instruction for s in samples]


def train_vae(vae, steps: int, batch: int, lr: float, device, log):
    vae.to(device).train()
    optimiser = torch.optim.AdamW(vae.parameters(), lr=lr)
    bar = tqdm(range(steps), desc="VAE")
    for step in bar:
        rng_start = TRAIN_SEEDS + 1_000_000 + step * batch
        source, target, _ = make_data(batch // 2, rng_start)
        x = to_tensor(np.concatenate([source, target])).to(device)
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample()).sample
        loss = F.mse_loss(recon, x) + 1e-6 * posterior.kl().mean()
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        if step % 100 == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}")
            log({"stage": "vae", "step": step, "loss": loss.item()})
    vae.eval().requires_grad_(False)
    with torch.no_grad():
        source, target, _ = make_data(256, EVAL_SEEDS - 10_000)
        latents = vae.encode(to_tensor(np.concatenate([source, target])).to(device)).latent_dist.mode()
        recon = vae.decode(latents).sample
        error = (recon - to_tensor(np.concatenate([source, target])).to(device)).abs().mean().item() * 127.5
    scaling = 1.0 / latents.std().item()
    vae.register_to_config(scaling_factor=scaling)
    log({"stage": "vae", "done": True, "scaling_factor": scaling, "recon_mae_gray_levels": error})
    return scaling


@torch.no_grad()
def encode_dataset(vae, tokenizer, n: int, device, chunk: int = 256):
    """Source latents (unscaled), target latents (scaled) and token ids for n training scenes."""
    sources, targets, ids = [], [], []
    for start in tqdm(range(0, n, chunk), desc="encode"):
        source, target, instructions = make_data(min(chunk, n - start), TRAIN_SEEDS + start)
        sources.append(vae.encode(to_tensor(source).to(device)).latent_dist.mode().cpu())
        targets.append((vae.encode(to_tensor(target).to(device)).latent_dist.mode() * vae.config.scaling_factor)
                       .cpu())
        ids.append(tokenizer(instructions, padding="max_length", max_length=MAX_TOKENS, truncation=True,
                             return_tensors="pt").input_ids)
    return torch.cat(sources), torch.cat(targets), torch.cat(ids)


def train_unet(unet, text_encoder, tokenizer, data, args, device, log):
    from diffusers import DDPMScheduler

    sources, targets, ids = data
    scheduler = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              num_train_timesteps=1000)
    empty = tokenizer([""], padding="max_length", max_length=MAX_TOKENS, return_tensors="pt").input_ids
    unet.to(device).train()
    text_encoder.to(device).train()
    params = list(unet.parameters()) + list(text_encoder.parameters())
    optimiser = torch.optim.AdamW(params, lr=args.lr, weight_decay=1e-2)
    warmup = min(500, args.steps // 10)

    def lr_at(step):
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, args.steps - warmup))) * 0.95 + 0.05

    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lr_at)
    ema_unet, ema_text = copy.deepcopy(unet).eval(), copy.deepcopy(text_encoder).eval()
    generator = torch.Generator().manual_seed(args.seed)
    bar = tqdm(range(args.steps), desc="UNet")
    running = None
    for step in bar:
        pick = torch.randint(len(sources), (args.batch,), generator=generator)
        source, target, tokens = sources[pick].to(device), targets[pick].to(device), ids[pick].clone()
        drop = torch.rand(args.batch, generator=generator)
        tokens[drop < 0.05] = empty  # caption dropped
        source = source * (~((drop >= 0.05) & (drop < 0.10))).float().view(-1, 1, 1, 1).to(device)  # image dropped
        noise = torch.randn(target.shape, generator=generator).to(device)
        t = torch.randint(0, 1000, (args.batch,), generator=generator).to(device)
        noisy = scheduler.add_noise(target, noise, t)
        text = text_encoder(tokens.to(device))[0]
        pred = unet(torch.cat([noisy, source], dim=1), t, encoder_hidden_states=text).sample
        per_sample = (pred - noise).pow(2).mean(dim=(1, 2, 3))
        if args.loss_weighting == "snr+1":
            # the v-prediction loss written for a noise predictor: ||eps - eps_hat||^2 / alpha_bar(t).
            # Plain noise loss gives the early, high-noise steps (where an edit decides WHICH object
            # changes) almost no weight; this restores it, clipped for stability.
            alpha_bar = scheduler.alphas_cumprod.to(device)[t]
            per_sample = per_sample * (1.0 / alpha_bar).clamp(max=args.max_weight)
        loss = per_sample.mean()
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimiser.step()
        schedule.step()
        decay = min(args.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            for ema, model in ((ema_unet, unet), (ema_text, text_encoder)):
                for pe, p in zip(ema.parameters(), model.parameters()):
                    pe.lerp_(p, 1 - decay)
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        if step % 100 == 0:
            bar.set_postfix(loss=f"{running:.4f}", lr=f"{schedule.get_last_lr()[0]:.1e}")
            log({"stage": "unet", "step": step, "loss": running, "lr": schedule.get_last_lr()[0]})
        if args.save_every and step and step % args.save_every == 0:
            yield ema_unet, ema_text
        if args.stop_after and step + 1 >= args.stop_after:
            break
    yield ema_unet, ema_text


def save(out: Path, vae, text_encoder, tokenizer, unet):
    from diffusers import EulerAncestralDiscreteScheduler, StableDiffusionInstructPix2PixPipeline

    pipe = StableDiffusionInstructPix2PixPipeline(
        vae=copy.deepcopy(vae).cpu(), text_encoder=copy.deepcopy(text_encoder).cpu(), tokenizer=tokenizer,
        unet=copy.deepcopy(unet).cpu(),
        scheduler=EulerAncestralDiscreteScheduler(beta_start=0.00085, beta_end=0.012,
                                                  beta_schedule="scaled_linear"),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.to(torch.float16).save_pretrained(out, safe_serialization=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="benchmarks/shapes_world/checkpoint")
    parser.add_argument("--steps", type=int, default=12_000, help="UNet training steps")
    parser.add_argument("--vae-steps", type=int, default=1200)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--ema", type=float, default=0.999)
    parser.add_argument("--scenes", type=int, default=30_000, help="training scenes (encoded once)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--save-every", type=int, default=2000, help="save the EMA weights every N steps")
    parser.add_argument("--stop-after", type=int, default=0,
                        help="end after this many steps (the schedule still spans --steps)")
    parser.add_argument("--loss-weighting", choices=("none", "snr+1"), default="snr+1",
                        help="weight of each timestep's noise loss (snr+1: the v-prediction loss)")
    parser.add_argument("--max-weight", type=float, default=50.0, help="clip of the snr+1 weight")
    parser.add_argument("--resume", help="a checkpoint folder to continue from: its VAE is kept (no VAE "
                                         "training), its text encoder and UNet are trained further")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log_file = (out / "train_log.jsonl").open("a")

    def log(record):
        log_file.write(json.dumps({"time": round(time.time()), **record}) + "\n")
        log_file.flush()

    log({"command": vars(args)})
    tokenizer = word_tokenizer()
    if args.resume:
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer

        tokenizer = CLIPTokenizer.from_pretrained(args.resume, subfolder="tokenizer")
        vae = AutoencoderKL.from_pretrained(args.resume, subfolder="vae").float().to(device).eval()
        vae.requires_grad_(False)
        text_encoder = CLIPTextModel.from_pretrained(args.resume, subfolder="text_encoder").float()
        unet = UNet2DConditionModel.from_pretrained(args.resume, subfolder="unet").float()
        log({"resumed_from": args.resume, "scaling_factor": vae.config.scaling_factor})
    else:
        vae, text_encoder, unet = build_models(tokenizer, args.seed)
        train_vae(vae, args.vae_steps, args.batch, 1e-3, device, log)
    log({"parameters": {name: sum(p.numel() for p in m.parameters())
                        for name, m in (("vae", vae), ("text_encoder", text_encoder), ("unet", unet))}})
    data = encode_dataset(vae, tokenizer, args.scenes, device)
    for ema_unet, ema_text in train_unet(unet, text_encoder, tokenizer, data, args, device, log):
        save(out, vae, ema_text, tokenizer, ema_unet)
        log({"saved": str(out)})


if __name__ == "__main__":
    main()
