"""Train a proxy editing model the way InstructPix2Pix was trained, in resumable chunks.

    python -m benchmarks.shapes_world.train_staged --work runs/m3 --world v2 --stage all --max-minutes 110

InstructPix2Pix starts from a text encoder trained apart and kept frozen (CLIP), and from a
text-to-image model (Stable Diffusion) whose cross-attention already grounds nouns; only then
does it learn to edit. The stages, each resumable:

1. ``data``   — scenes generated once into shards (source, edited target, caption, instruction);
2. ``vae``    — an AutoencoderKL (×4), its ``scaling_factor`` set for unit variance;
3. ``encode`` — every scene's latents (source unscaled, as InstructPix2Pix conditions on them;
   source and target scaled);
4. ``clip``   — a CLIPTextModel (word-level tokenizer) trained contrastively against a small
   image encoder on scenes and their captions, then FROZEN (``--text frozen``);
5. ``t2i``    — a 4-channel UNet2DConditionModel trained on captions (text-to-image), 10 % of
   captions dropped (``--text frozen``);
6. ``edit``   — that UNet's input convolution widened to 8 channels, the new channels
   zero-initialised (as InstructPix2Pix did), trained on the editing objective: the target's
   noised latents beside the source's unscaled latents, 5 % of instructions, 5 % of images and
   5 % of both dropped. With ``--text joint`` (the v1 proxy's recipe) there is no ``clip`` and
   no ``t2i``: a fresh 8-channel UNet and a fresh text encoder learn editing together;
7. ``export`` — a ``StableDiffusionInstructPix2PixPipeline`` folder (fp16 safetensors) that
   ``EditSegmenter.from_pretrained`` loads like any checkpoint (and, after ``t2i``, the
   text-to-image model as a ``StableDiffusionPipeline`` folder beside the run, for the drawing check).

What varies between the members of the proxy population (``population.py``) are the options
real editors differ in: ``--world`` (v1: 64×64 scenes, small objects; v2: 128×128 at RefCOCO's
proportions), ``--text`` (frozen after its own training, or trained along), ``--layout`` (UNet
depth and the levels that have cross-attention), ``--loss-weighting`` and ``--seed``.
``--autocast bf16`` trains under bfloat16 autocast (measured: 1.2× faster per v2 UNet step on a
CPU with native bf16, no faster for the smaller v1 UNet).

Every training stage saves its full state (weights, EMA, optimiser, schedule, step, random
generators) every ``--save-every`` steps and when ``--max-minutes`` runs out, and continues from
it when run again: a chunk of at most two hours on two CPU cores, as many chunks as it takes.
``--device cuda`` runs the same code on a GPU (``gpu_v2.sh`` there: every stage in one go).
Every command is appended to ``<work>/train_log.jsonl`` with its arguments and seed.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from benchmarks.shapes_world import world_v2
from napari_editseg import shapes_world

SHARD = 2000
STAGES = ("data", "vae", "encode", "clip", "t2i", "edit", "export")


# -- the worlds -----------------------------------------------------------------------------------
def caption_v1(sample) -> str:
    """A v1 scene's caption, as world v2 writes them: every object, left to right."""
    names = [f"a {o.colour} {o.shape}" for o in sorted(sample.objects, key=lambda o: o.col)]
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


@dataclass(frozen=True)
class World:
    """What the recipe needs of a world: its scenes and vocabulary, and the text encoder's size."""

    name: str
    size: int
    words: tuple
    max_tokens: int
    text_width: int
    text_layers: int
    tune_seeds: int

    def sample(self, seed: int) -> dict:
        if self.name == "v1":
            s = shapes_world.make_sample(seed, self.size)
            caption = caption_v1(s)
        else:
            s = world_v2.make_sample(seed, self.size)
            caption = s.caption
        return {"source": s.image, "target": s.target, "caption": caption, "instruction": s.instruction}


WORLDS = {
    # v1: the shipped checkpoint's world (64×64, 16×16 latents) and its text encoder's size; 24 tokens hold
    # a four-object caption
    "v1": World("v1", 64, shapes_world.WORDS + ("a", "and"), 24, 64, 2, shapes_world.TUNE_SEEDS),
    "v2": World("v2", world_v2.SIZE, world_v2.WORDS, 32, 128, 4, world_v2.TUNE_SEEDS),
}

# UNet layouts (InstructPix2Pix-style levels at a small width; blocks listed from the latent side).
# Real editors differ here: SD 1.5 (InstructPix2Pix, MagicBrush) has cross-attention in its three
# finer levels; SDXL has none at the latent side and deeper transformers at the coarser levels.
LAYOUTS = {
    "v1": dict(block_out_channels=(32, 64, 64, 64), transformer_layers_per_block=1,
               down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
               up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3),
    "v2": dict(block_out_channels=(32, 64, 64, 64), transformer_layers_per_block=1,
               down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * 2 + ("DownBlock2D",),
               up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 2 + ("UpBlock2D",)),
    "sdxl": dict(block_out_channels=(32, 64, 96), transformer_layers_per_block=(1, 1, 2),
                 down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * 2,
                 up_block_types=("CrossAttnUpBlock2D",) * 2 + ("UpBlock2D",)),
}


def word_tokenizer_for(world: World):
    from benchmarks.shapes_world.train import word_tokenizer

    return word_tokenizer(world.words, world.max_tokens)


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 N×H×W×3 → float N×3×H×W in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def autocast(args):
    """bfloat16 autocast for the forward when asked (the loss is computed in float32)."""
    if getattr(args, "autocast", "none") == "bf16":
        return torch.autocast(torch.device(args.device).type, dtype=torch.bfloat16)
    return nullcontext()


# -- 1. data -------------------------------------------------------------------------------------
def _shard(job: tuple) -> dict:
    world, start, n = job
    samples = [WORLDS[world].sample(start + i) for i in range(n)]
    return {key: np.stack([s[key] for s in samples]) if key in ("source", "target") else
            np.array([s[key] for s in samples]) for key in ("source", "target", "caption", "instruction")}


def make_data(data: Path, world: World, scenes: int, workers: int, log) -> None:
    """Shards of SHARD training scenes (seeds 0 … scenes−1, all below the tuning seeds); kept shards are skipped."""
    from concurrent.futures import ProcessPoolExecutor

    assert scenes <= world.tune_seeds
    data.mkdir(parents=True, exist_ok=True)
    todo = [(i, start) for i, start in enumerate(range(0, scenes, SHARD)) if not (data / f"{i:04d}.npz").exists()]
    with ProcessPoolExecutor(max(1, workers)) as pool:
        jobs = {i: pool.submit(_shard, (world.name, start, min(SHARD, scenes - start))) for i, start in todo}
        for i, job in tqdm(jobs.items(), desc="data"):
            partial = data / f"{i:04d}.tmp.npz"
            np.savez(partial, **job.result())
            partial.replace(data / f"{i:04d}.npz")  # a killed run leaves no half shard
    log({"stage": "data", "scenes": scenes, "shards": len(shards(data))})


def shards(data: Path) -> list:
    return sorted(p for p in data.glob("[0-9]*.npz") if ".tmp" not in p.name)


# -- the resumable training loop ----------------------------------------------------------------
class Chunk:
    """One stage's training state on disk: resumes where the last chunk stopped, saves every
    ``save_every`` steps and when the chunk's ``max_minutes`` are spent (counted from the chunk's start,
    ``args.started``, not the stage's: a chunk that finishes one stage and starts the next still ends on
    time)."""

    def __init__(self, folder: Path, modules: dict, optimiser, steps: int, lr_warmup: int, args, log):
        self.folder, self.modules, self.optimiser, self.steps, self.log = folder, modules, optimiser, steps, log
        self.args = args
        warmup = max(1, lr_warmup)

        def lr_at(step):
            if step < warmup:
                return (step + 1) / warmup
            return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup))) * 0.95 + 0.05

        self.schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lr_at)
        self.ema = {name: copy.deepcopy(m).eval().requires_grad_(False) for name, m in modules.items()}
        self.generator = torch.Generator().manual_seed(args.seed)
        self.step = 0
        state_file = folder / "state.pt"
        if state_file.exists():
            state = torch.load(state_file, map_location="cpu", weights_only=False)
            for name, m in modules.items():
                m.load_state_dict(state["model"][name])
                self.ema[name].load_state_dict(state["ema"][name])
            optimiser.load_state_dict(state["optimiser"])
            self.schedule.load_state_dict(state["schedule"])
            self.generator.set_state(state["generator"])
            self.step = state["step"]
            log({"stage": folder.name, "resumed_at": self.step})

    def update_ema(self) -> None:
        decay = min(self.args.ema, (1 + self.step) / (10 + self.step))
        with torch.no_grad():
            for name, m in self.modules.items():
                for pe, p in zip(self.ema[name].parameters(), m.parameters()):
                    pe.lerp_(p.detach(), 1 - decay)

    def save(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        state = {"model": {n: m.state_dict() for n, m in self.modules.items()},
                 "ema": {n: m.state_dict() for n, m in self.ema.items()}, "optimiser": self.optimiser.state_dict(),
                 "schedule": self.schedule.state_dict(), "generator": self.generator.get_state(), "step": self.step}
        partial = self.folder / "state.tmp.pt"
        torch.save(state, partial)
        partial.replace(self.folder / "state.pt")
        self.log({"stage": self.folder.name, "saved_at": self.step})

    def run(self, step_fn, desc: str) -> bool:
        """Steps until done or out of time; True when the stage is complete."""
        running = None
        bar = tqdm(range(self.step, self.steps), desc=desc, initial=self.step, total=self.steps)
        for _ in bar:
            loss = step_fn(self.generator)
            self.optimiser.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_([p for m in self.modules.values() for p in m.parameters()], 1.0)
            self.optimiser.step()
            self.schedule.step()
            self.step += 1
            self.update_ema()
            running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
            if self.step % 100 == 0:
                bar.set_postfix(loss=f"{running:.4f}")
                self.log({"stage": self.folder.name, "step": self.step, "loss": running,
                          "lr": self.schedule.get_last_lr()[0]})
            out_of_time = (time.time() - self.args.started) / 60 > self.args.max_minutes
            if self.step % self.args.save_every == 0 or out_of_time or self.step == self.steps:
                self.save()
            if out_of_time:
                self.log({"stage": self.folder.name, "chunk_ended_at": self.step, "of": self.steps})
                return False
        return self.step >= self.steps


# -- 2. VAE ---------------------------------------------------------------------------------------
def build_vae(world: World):
    from diffusers import AutoencoderKL

    # narrow at full resolution, where a CPU step spends its time
    channels = (16, 32, 32) if world.size <= 64 else (16, 32, 64)
    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=channels,
                         layers_per_block=1, down_block_types=("DownEncoderBlock2D",) * 3,
                         up_block_types=("UpDecoderBlock2D",) * 3, norm_num_groups=16, sample_size=world.size)


def train_vae(work: Path, world: World, args, device, log) -> bool:
    torch.manual_seed(args.seed)
    vae = build_vae(world).to(device).train()
    optimiser = torch.optim.AdamW(vae.parameters(), lr=args.vae_lr)
    chunk = Chunk(work / "vae", {"vae": vae}, optimiser, args.vae_steps, 200, args, log)
    # a few shards in memory (10,000 scenes, their sources and targets) are variety enough for the
    # autoencoder; loading a shard per step would cost more than the step
    loaded = [np.load(f) for f in shards(args.data)[:5]]
    images = np.concatenate([np.concatenate([d["source"], d["target"]]) for d in loaded])
    del loaded

    def step(g):
        pick = torch.randint(len(images), (args.vae_batch,), generator=g).numpy()
        x = to_tensor(images[pick]).to(device)
        with autocast(args):
            posterior = vae.encode(x).latent_dist
            recon = vae.decode(posterior.sample()).sample.float()
        return F.mse_loss(recon, x) + 0.1 * F.l1_loss(recon, x) + 1e-6 * posterior.kl().float().mean()

    done = chunk.run(step, "VAE")
    if done:
        final = chunk.ema["vae"].to(device)
        with torch.no_grad():
            held = _shard((world.name, world.tune_seeds - 2000, 256))
            x = to_tensor(np.concatenate([held["source"], held["target"]])).to(device)
            latents = final.encode(x).latent_dist.mode()
            error = (final.decode(latents).sample - x).abs().mean().item() * 127.5
        final.register_to_config(scaling_factor=1.0 / latents.std().item())
        final.save_pretrained(work / "vae" / "model")
        log({"stage": "vae", "done": True, "scaling_factor": final.config.scaling_factor,
             "recon_mae_grey_levels": error})
    return done


def copy_vae(pipeline: Path, work: Path, log) -> bool:
    """Another member's autoencoder (float32), scaling factor and all."""
    from diffusers import AutoencoderKL

    AutoencoderKL.from_pretrained(pipeline / "vae").float().save_pretrained(work / "vae" / "model")
    log({"stage": "vae", "done": True, "copied_from": str(pipeline)})
    return True


def load_vae(work: Path, device):
    from diffusers import AutoencoderKL

    return AutoencoderKL.from_pretrained(work / "vae" / "model").to(device).eval().requires_grad_(False)


# -- 3. encode ------------------------------------------------------------------------------------
@torch.no_grad()
def encode(work: Path, world: World, args, device, log, chunk: int = 250) -> None:
    vae, tokenizer = load_vae(work, device), word_tokenizer_for(world)
    scale = vae.config.scaling_factor
    out = {"source": [], "target": [], "caption_ids": [], "instruction_ids": []}
    for file in tqdm(shards(args.data), desc="encode"):
        data = np.load(file)
        for start in range(0, len(data["source"]), chunk):
            part = slice(start, start + chunk)
            out["source"].append(vae.encode(to_tensor(data["source"][part]).to(device)).latent_dist.mode().half().cpu())
            out["target"].append((vae.encode(to_tensor(data["target"][part]).to(device)).latent_dist.mode() * scale)
                                 .half().cpu())
            for key, texts in (("caption_ids", data["caption"][part]), ("instruction_ids", data["instruction"][part])):
                out[key].append(tokenizer(list(texts), padding="max_length", max_length=world.max_tokens,
                                          truncation=True, return_tensors="pt").input_ids)
    tensors = {k: torch.cat(v) for k, v in out.items()}
    torch.save(tensors, work / "latents.tmp.pt")
    (work / "latents.tmp.pt").replace(work / "latents.pt")
    log({"stage": "encode", "scenes": len(tensors["source"]), "scaling_factor": scale})


# -- 4. CLIP --------------------------------------------------------------------------------------
class LatentImageEncoder(torch.nn.Module):
    """A small CNN from 4×h×w scaled latents to a unit embedding (the image tower of the CLIP stage)."""

    def __init__(self, width: int = 128, dim: int = 128):
        super().__init__()
        layers, channels = [], 4
        for out in (width // 2, width, width, width):
            layers += [torch.nn.Conv2d(channels, out, 3, stride=2, padding=1), torch.nn.GroupNorm(8, out),
                       torch.nn.SiLU()]
            channels = out
        self.net = torch.nn.Sequential(*layers, torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                       torch.nn.Linear(width, dim))

    def forward(self, x):
        return F.normalize(self.net(x), dim=-1)


def build_text_encoder(tokenizer, world: World):
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=world.text_width, intermediate_size=4 * world.text_width,
        num_hidden_layers=world.text_layers, num_attention_heads=4, max_position_embeddings=world.max_tokens,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    ))


def train_clip(work: Path, world: World, args, device, log) -> bool:
    data = torch.load(work / "latents.pt")
    tokenizer = word_tokenizer_for(world)
    torch.manual_seed(args.seed)
    text, image = build_text_encoder(tokenizer, world).to(device).train(), LatentImageEncoder().to(device).train()
    projection = torch.nn.Linear(world.text_width, 128, bias=False).to(device)
    log_scale = torch.nn.Parameter(torch.tensor(math.log(1 / 0.07), device=device))
    holder = torch.nn.ModuleDict({"text": text, "image": image, "projection": projection})
    holder.register_parameter("log_scale", log_scale)
    optimiser = torch.optim.AdamW(holder.parameters(), lr=args.clip_lr, weight_decay=0.1)
    chunk = Chunk(work / "clip", {"clip": holder}, optimiser, args.clip_steps, 200, args, log)
    latents, ids = data["source"], data["caption_ids"]

    def step(g):
        pick = torch.randint(len(latents), (args.clip_batch,), generator=g)
        x = latents[pick].float().to(device) * _scale(work)
        t = F.normalize(projection(text(ids[pick].to(device)).pooler_output), dim=-1)
        logits = log_scale.clamp(max=math.log(100)).exp() * image(x) @ t.T
        labels = torch.arange(len(pick), device=device)
        return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))

    done = chunk.run(step, "CLIP")
    if done:
        final = chunk.ema["clip"]
        final["text"].save_pretrained(work / "clip" / "text_encoder")
        tokenizer.save_pretrained(work / "clip" / "tokenizer")
        log({"stage": "clip", "done": True, "retrieval_top1": clip_retrieval(final, work, world, device)})
    return done


def _scale(work: Path) -> float:
    return json.loads((work / "vae" / "model" / "config.json").read_text())["scaling_factor"]


@torch.no_grad()
def clip_retrieval(holder, work: Path, world: World, device, n: int = 256) -> float:
    """Held-out scenes: how often a scene's own caption is the closest of n captions (chance 1/n)."""
    vae, tokenizer = load_vae(work, device), word_tokenizer_for(world)
    held = _shard((world.name, world.tune_seeds - 4000, n))
    x = vae.encode(to_tensor(held["source"]).to(device)).latent_dist.mode() * vae.config.scaling_factor
    ids = tokenizer(list(held["caption"]), padding="max_length", max_length=world.max_tokens, truncation=True,
                    return_tensors="pt").input_ids
    t = F.normalize(holder["projection"](holder["text"](ids.to(device)).pooler_output), dim=-1)
    return float(((holder["image"](x) @ t.T).argmax(dim=1) == torch.arange(n, device=device)).float().mean())


def load_text_encoder(work: Path, device):
    from transformers import CLIPTextModel

    return CLIPTextModel.from_pretrained(work / "clip" / "text_encoder").to(device).eval().requires_grad_(False)


# -- 5-6. UNets -----------------------------------------------------------------------------------
def build_unet(in_channels: int, world: World = WORLDS["v2"], layout: str = "v2"):
    """A small UNet2DConditionModel of one of ``LAYOUTS`` on the world's latents (side / 4)."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(sample_size=world.size // 4, in_channels=in_channels, out_channels=4,
                                layers_per_block=1, cross_attention_dim=world.text_width, attention_head_dim=4,
                                **LAYOUTS[layout])


def scheduler():
    from diffusers import DDPMScheduler

    return DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000)


@torch.no_grad()
def embed(text_encoder, ids: torch.Tensor, device, chunk: int = 512) -> torch.Tensor:
    """The frozen text encoder's outputs for every token sequence, once (fp16, CPU)."""
    return torch.cat([text_encoder(ids[i:i + chunk].to(device))[0].half().cpu() for i in range(0, len(ids), chunk)])


def loss_weight(kind: str, alpha_bar: torch.Tensor, max_weight: float) -> torch.Tensor:
    """Each sample's weight on its noise loss, by timestep.

    ``none``: the plain noise loss (Stable Diffusion's and InstructPix2Pix's own objective);
    ``snr+1``: min(1/ᾱ_t, max_weight), the v-prediction loss written for a noise predictor, which
    gives the high-noise steps — where an edit decides WHICH object changes — their weight back;
    ``min-snr``: min(SNR, 5)/SNR (Hang et al. 2023's min-SNR-γ for a noise predictor), which
    lowers the weight of the low-noise steps instead."""
    if kind == "none":
        return torch.ones_like(alpha_bar)
    if kind == "snr+1":
        return (1.0 / alpha_bar).clamp(max=max_weight)
    if kind == "min-snr":
        snr = alpha_bar / (1 - alpha_bar)
        return snr.clamp(max=5.0) / snr
    raise ValueError(f"unknown loss weighting {kind!r}")


def noise_loss(unet, sched, clean, condition, text, g, device, args):
    """The weighted noise loss at a uniform DDPM timestep."""
    noise = torch.randn(clean.shape, generator=g).to(device)
    t = torch.randint(0, 1000, (len(clean),), generator=g).to(device)
    noisy = sched.add_noise(clean, noise, t)
    x = noisy if condition is None else torch.cat([noisy, condition], dim=1)
    with autocast(args):
        pred = unet(x, t, encoder_hidden_states=text).sample
    per_sample = (pred.float() - noise).pow(2).mean(dim=(1, 2, 3))
    weight = loss_weight(args.loss_weighting, sched.alphas_cumprod.to(device)[t], args.max_weight)
    return (per_sample * weight).mean()


def _empty_ids(world: World) -> torch.Tensor:
    return word_tokenizer_for(world)([""], padding="max_length", max_length=world.max_tokens,
                                     return_tensors="pt").input_ids


def train_t2i(work: Path, world: World, args, device, log) -> bool:
    data, text_encoder = torch.load(work / "latents.pt"), load_text_encoder(work, device)
    captions = embed(text_encoder, data["caption_ids"], device)
    empty = embed(text_encoder, _empty_ids(world), device)
    images = data["source"].float() * _scale(work)
    torch.manual_seed(args.seed)
    unet = build_unet(4, world, args.layout).to(device).train()
    optimiser = torch.optim.AdamW(unet.parameters(), lr=args.lr, weight_decay=1e-2)
    chunk = Chunk(work / "t2i", {"unet": unet}, optimiser, args.t2i_steps, 500, args, log)
    sched = scheduler()

    def step(g):
        pick = torch.randint(len(images), (args.batch,), generator=g)
        text = captions[pick].float()
        text[torch.rand(len(pick), generator=g) < 0.10] = empty.float()  # classifier-free guidance
        return noise_loss(unet, sched, images[pick].to(device), None, text.to(device), g, device, args)

    done = chunk.run(step, "text-to-image")
    if done:
        chunk.ema["unet"].save_pretrained(work / "t2i" / "unet")
        log({"stage": "t2i", "done": True})
    return done


def widen_input(unet_4ch, world: World = WORLDS["v2"], layout: str = "v2"):
    """The text-to-image UNet with 8 input channels: the 4 new ones (the source image's latents)
    start at zero, so the model starts as the text-to-image model it was (InstructPix2Pix)."""
    unet = build_unet(8, world, layout)
    state = unet_4ch.state_dict()
    weight = state.pop("conv_in.weight")
    unet.load_state_dict(state, strict=False)
    with torch.no_grad():
        unet.conv_in.weight.zero_()
        unet.conv_in.weight[:, :4] = weight
    return unet


def train_edit(work: Path, world: World, args, device, log) -> bool:
    from diffusers import UNet2DConditionModel

    data = torch.load(work / "latents.pt")
    empty_ids = _empty_ids(world)
    modules = {}
    if args.text == "frozen":
        text_encoder = load_text_encoder(work, device)
        instructions = embed(text_encoder, data["instruction_ids"], device)
        empty = embed(text_encoder, empty_ids, device)
        unet = widen_input(UNet2DConditionModel.from_pretrained(work / "t2i" / "unet"), world, args.layout)
    else:  # joint: a fresh text encoder learns along with a fresh UNet (the v1 proxy's recipe)
        torch.manual_seed(args.seed)
        text_encoder = build_text_encoder(word_tokenizer_for(world), world).to(device).train()
        unet = build_unet(8, world, args.layout)
        modules["text"] = text_encoder
    modules["unet"] = unet.to(device).train()
    params = [p for m in modules.values() for p in m.parameters()]
    optimiser = torch.optim.AdamW(params, lr=args.lr, weight_decay=1e-2)
    chunk = Chunk(work / "edit", modules, optimiser, args.edit_steps, 500, args, log)
    sched = scheduler()
    sources, targets, ids = data["source"], data["target"], data["instruction_ids"]

    def step(g):
        pick = torch.randint(len(sources), (args.batch,), generator=g)
        source = sources[pick].float()
        drop = torch.rand(len(pick), generator=g)
        no_text = (drop < 0.05) | (drop >= 0.10) & (drop < 0.15)  # text dropped (and both)
        source[(drop >= 0.05) & (drop < 0.15)] = 0.0  # image dropped (and both)
        if args.text == "frozen":
            text = instructions[pick].float()
            text[no_text] = empty.float()
        else:
            tokens = ids[pick].clone()
            tokens[no_text] = empty_ids
            with autocast(args):
                text = text_encoder(tokens.to(device))[0]
        return noise_loss(unet, sched, targets[pick].float().to(device), source.to(device), text.to(device), g,
                          device, args)

    done = chunk.run(step, "edit")
    if done:
        chunk.ema["unet"].save_pretrained(work / "edit" / "unet")
        if args.text == "joint":
            chunk.ema["text"].save_pretrained(work / "edit" / "text_encoder")
            word_tokenizer_for(world).save_pretrained(work / "edit" / "tokenizer")
        log({"stage": "edit", "done": True})
    return done


# -- 7. export ------------------------------------------------------------------------------------
def export(work: Path, out: Path, args, log) -> None:
    from diffusers import (
        EulerAncestralDiscreteScheduler,
        StableDiffusionInstructPix2PixPipeline,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextModel, CLIPTokenizer

    text_folder = work / ("clip" if args.text == "frozen" else "edit")
    parts = dict(vae=load_vae(work, "cpu"), text_encoder=CLIPTextModel.from_pretrained(text_folder / "text_encoder"),
                 tokenizer=CLIPTokenizer.from_pretrained(text_folder / "tokenizer"),
                 scheduler=EulerAncestralDiscreteScheduler(beta_start=0.00085, beta_end=0.012,
                                                           beta_schedule="scaled_linear"),
                 safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    edit = StableDiffusionInstructPix2PixPipeline(unet=UNet2DConditionModel.from_pretrained(work / "edit" / "unet"),
                                                  **parts)
    edit.to(torch.float16).save_pretrained(out, safe_serialization=True)
    if (work / "t2i" / "unet").exists():
        t2i = StableDiffusionPipeline(unet=UNet2DConditionModel.from_pretrained(work / "t2i" / "unet"), **parts)
        t2i.to(torch.float16).save_pretrained(work / "text_to_image", safe_serialization=True)
    log({"stage": "export", "out": str(out)})


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", default="runs/v2", help="folder of the run's states and logs")
    p.add_argument("--data", help="folder of the scene shards (default: <work>/data; runs of one world may share it)")
    p.add_argument("--stage", choices=STAGES + ("all",), default="all")
    p.add_argument("--out", default="benchmarks/shapes_world/checkpoint_v2", help="where export writes")
    p.add_argument("--world", choices=tuple(WORLDS), default="v2")
    p.add_argument("--text", choices=("frozen", "joint"), default="frozen",
                   help="frozen: CLIP-style text encoder and text-to-image first (InstructPix2Pix's recipe); "
                        "joint: text encoder and editing UNet trained together from scratch (the v1 proxy's)")
    p.add_argument("--layout", choices=tuple(LAYOUTS), default="v2", help="UNet depth and cross-attention levels")
    p.add_argument("--loss-weighting", choices=("none", "snr+1", "min-snr"), default="snr+1")
    p.add_argument("--max-weight", type=float, default=50.0, help="clip of the snr+1 weight")
    p.add_argument("--autocast", choices=("none", "bf16"), default="none")
    p.add_argument("--scenes", type=int, default=40_000)
    p.add_argument("--workers", type=int, default=2, help="processes generating scenes")
    p.add_argument("--vae-from", help="take the autoencoder of this pipeline folder instead of training one (members "
                                      "of one family share it, as InstructPix2Pix and MagicBrush share SD's)")
    p.add_argument("--vae-steps", type=int, default=2000)
    p.add_argument("--vae-batch", type=int, default=8)
    p.add_argument("--vae-lr", type=float, default=1e-3)
    p.add_argument("--clip-steps", type=int, default=4000)
    p.add_argument("--clip-batch", type=int, default=128)
    p.add_argument("--clip-lr", type=float, default=1e-3)
    p.add_argument("--t2i-steps", type=int, default=20_000)
    p.add_argument("--edit-steps", type=int, default=20_000)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--ema", type=float, default=0.999)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--save-every", type=int, default=500)
    p.add_argument("--max-minutes", type=float, default=110.0, help="end this chunk (state saved) after this")
    return p


def main(argv=None) -> bool:
    """Runs the wanted stages; True when the run is complete (exported)."""
    args = parser().parse_args(argv)
    args.started = time.time()  # the chunk's clock, shared by its stages
    if args.threads:
        torch.set_num_threads(args.threads)
    work, device, world = Path(args.work), torch.device(args.device), WORLDS[args.world]
    args.data = Path(args.data) if args.data else work / "data"
    work.mkdir(parents=True, exist_ok=True)
    log_file = (work / "train_log.jsonl").open("a")

    def log(record):
        log_file.write(json.dumps({"time": round(time.time()), **record}, default=str) + "\n")
        log_file.flush()

    log({"command": vars(args)})
    frozen = args.text == "frozen"
    stages = {
        "data": (lambda: len(shards(args.data)) * SHARD >= args.scenes,
                 lambda: make_data(args.data, world, args.scenes, args.workers, log) or True),
        "vae": (lambda: (work / "vae" / "model").exists(),
                lambda: copy_vae(Path(args.vae_from), work, log) if args.vae_from else
                train_vae(work, world, args, device, log)),
        "encode": (lambda: (work / "latents.pt").exists(),
                   lambda: encode(work, world, args, device, log) or True),
        "clip": (lambda: not frozen or (work / "clip" / "text_encoder").exists(),
                 lambda: train_clip(work, world, args, device, log)),
        "t2i": (lambda: not frozen or (work / "t2i" / "unet").exists(),
                lambda: train_t2i(work, world, args, device, log)),
        "edit": (lambda: (work / "edit" / "unet").exists(), lambda: train_edit(work, world, args, device, log)),
        "export": (lambda: False, lambda: export(work, Path(args.out), args, log) or True),
    }
    for stage in STAGES if args.stage == "all" else (args.stage,):
        done, run = stages[stage]
        if not done() and not run():
            return False  # out of time: the next chunk continues
    return args.stage in ("all", "export")


if __name__ == "__main__":
    main()
