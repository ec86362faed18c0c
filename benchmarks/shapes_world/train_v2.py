"""Train the v2 proxy editing model the way InstructPix2Pix was trained, in resumable chunks.

    python benchmarks/shapes_world/train_v2.py --work runs/v2 --stage all --max-minutes 110

InstructPix2Pix starts from a text encoder trained apart and kept frozen (CLIP), and from a
text-to-image model (Stable Diffusion) whose cross-attention already grounds nouns; only then
does it learn to edit. The v1 proxy learned text and editing at once, with a text encoder
trained along, so its token embeddings need not keep the words' identity. v2 follows the real
recipe on the v2 world (``napari_editseg.shapes_world_v2``, 128×128 scenes at RefCOCO's
proportions):

1. ``data``   — scenes generated once into shards (source, edited target, caption, instruction);
2. ``vae``    — an AutoencoderKL (×4: 32×32 latents), its ``scaling_factor`` set for unit variance;
3. ``encode`` — every scene's latents (source unscaled and scaled, target scaled);
4. ``clip``   — a CLIPTextModel (word-level tokenizer) trained contrastively against a small
   image encoder on scenes and their captions, then FROZEN;
5. ``t2i``    — a 4-channel UNet2DConditionModel trained on captions (text-to-image), 10 % of
   captions dropped;
6. ``edit``   — that UNet's input convolution widened to 8 channels, the new channels
   zero-initialised (as InstructPix2Pix did), trained on the editing objective: the target's
   noised latents beside the source's unscaled latents, 5 % of instructions, 5 % of images and
   5 % of both dropped;
7. ``export`` — a ``StableDiffusionInstructPix2PixPipeline`` folder (fp16 safetensors) that
   ``EditSegmenter.from_pretrained`` loads like any checkpoint; and the text-to-image model as a
   ``StableDiffusionPipeline`` folder for the drawing check.

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
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from napari_editseg.shapes_world_v2 import SIZE, TUNE_SEEDS, WORDS, make_sample

MAX_TOKENS = 32
SHARD = 2000
STAGES = ("data", "vae", "encode", "clip", "t2i", "edit", "export")


def tokenizer_v2():
    from train import word_tokenizer  # benchmarks/shapes_world/train.py, beside this file

    return word_tokenizer(WORDS, MAX_TOKENS)


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 N×H×W×3 → float N×3×H×W in [-1, 1]."""
    return torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 127.5 - 1.0


# -- 1. data -------------------------------------------------------------------------------------
def _shard(args: tuple) -> dict:
    start, n = args
    samples = [make_sample(start + i) for i in range(n)]
    return {"source": np.stack([s.image for s in samples]), "target": np.stack([s.target for s in samples]),
            "caption": np.array([s.caption for s in samples]),
            "instruction": np.array([s.instruction for s in samples])}


def make_data(work: Path, scenes: int, workers: int, log) -> None:
    """Shards of SHARD training scenes (seeds 0 … scenes−1, all below TUNE_SEEDS); kept shards are skipped."""
    from concurrent.futures import ProcessPoolExecutor

    assert scenes <= TUNE_SEEDS
    folder = work / "data"
    folder.mkdir(parents=True, exist_ok=True)
    todo = [(i, start) for i, start in enumerate(range(0, scenes, SHARD)) if not (folder / f"{i:04d}.npz").exists()]
    with ProcessPoolExecutor(max(1, workers)) as pool:
        jobs = {i: pool.submit(_shard, (start, min(SHARD, scenes - start))) for i, start in todo}
        for i, job in tqdm(jobs.items(), desc="data"):
            partial = folder / f"{i:04d}.tmp.npz"
            np.savez(partial, **job.result())
            partial.replace(folder / f"{i:04d}.npz")  # a killed run leaves no half shard
    log({"stage": "data", "scenes": scenes, "shards": len(list(folder.glob("[0-9]*.npz")))})


def shards(work: Path) -> list:
    return sorted(p for p in (work / "data").glob("[0-9]*.npz") if ".tmp" not in p.name)


# -- the resumable training loop ----------------------------------------------------------------
class Chunk:
    """One stage's training state on disk: resumes where the last chunk stopped, saves every
    ``save_every`` steps and when ``max_minutes`` are spent."""

    def __init__(self, folder: Path, modules: dict, optimiser, steps: int, lr_warmup: int, args, log):
        self.folder, self.modules, self.optimiser, self.steps, self.log = folder, modules, optimiser, steps, log
        self.args, self.start_time = args, time.time()
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
            out_of_time = (time.time() - self.start_time) / 60 > self.args.max_minutes
            if self.step % self.args.save_every == 0 or out_of_time or self.step == self.steps:
                self.save()
            if out_of_time:
                self.log({"stage": self.folder.name, "chunk_ended_at": self.step, "of": self.steps})
                return False
        return self.step >= self.steps


# -- 2. VAE ---------------------------------------------------------------------------------------
def build_vae():
    from diffusers import AutoencoderKL

    # narrow at full resolution, where a CPU step spends its time (2.8 s at batch 8 against 12 s for 32 channels)
    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(16, 32, 64),
                         layers_per_block=1, down_block_types=("DownEncoderBlock2D",) * 3,
                         up_block_types=("UpDecoderBlock2D",) * 3, norm_num_groups=16, sample_size=SIZE)


def train_vae(work: Path, args, device, log) -> bool:
    torch.manual_seed(args.seed)
    vae = build_vae().to(device).train()
    optimiser = torch.optim.AdamW(vae.parameters(), lr=args.vae_lr)
    chunk = Chunk(work / "vae", {"vae": vae}, optimiser, args.vae_steps, 200, args, log)
    # a few shards in memory (10,000 scenes, their sources and targets) are variety enough for the
    # autoencoder; loading a shard per step would cost more than the step
    loaded = [np.load(f) for f in shards(work)[:5]]
    images = np.concatenate([np.concatenate([d["source"], d["target"]]) for d in loaded])
    del loaded

    def step(g):
        pick = torch.randint(len(images), (args.vae_batch,), generator=g).numpy()
        x = to_tensor(images[pick]).to(device)
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample()).sample
        return F.mse_loss(recon, x) + 0.1 * F.l1_loss(recon, x) + 1e-6 * posterior.kl().mean()

    done = chunk.run(step, "VAE")
    if done:
        final = chunk.ema["vae"].to(device)
        with torch.no_grad():
            held = _shard((TUNE_SEEDS - 2000, 256))
            x = to_tensor(np.concatenate([held["source"], held["target"]])).to(device)
            latents = final.encode(x).latent_dist.mode()
            error = (final.decode(latents).sample - x).abs().mean().item() * 127.5
        final.register_to_config(scaling_factor=1.0 / latents.std().item())
        final.save_pretrained(work / "vae" / "model")
        log({"stage": "vae", "done": True, "scaling_factor": final.config.scaling_factor,
             "recon_mae_grey_levels": error})
    return done


def load_vae(work: Path, device):
    from diffusers import AutoencoderKL

    return AutoencoderKL.from_pretrained(work / "vae" / "model").to(device).eval().requires_grad_(False)


# -- 3. encode ------------------------------------------------------------------------------------
@torch.no_grad()
def encode(work: Path, device, log, chunk: int = 250) -> None:
    vae, tokenizer = load_vae(work, device), tokenizer_v2()
    scale = vae.config.scaling_factor
    out = {"source": [], "target": [], "caption_ids": [], "instruction_ids": []}
    for file in tqdm(shards(work), desc="encode"):
        data = np.load(file)
        for start in range(0, len(data["source"]), chunk):
            part = slice(start, start + chunk)
            out["source"].append(vae.encode(to_tensor(data["source"][part]).to(device)).latent_dist.mode().half().cpu())
            out["target"].append((vae.encode(to_tensor(data["target"][part]).to(device)).latent_dist.mode() * scale)
                                 .half().cpu())
            for key, texts in (("caption_ids", data["caption"][part]), ("instruction_ids", data["instruction"][part])):
                out[key].append(tokenizer(list(texts), padding="max_length", max_length=MAX_TOKENS, truncation=True,
                                          return_tensors="pt").input_ids)
    tensors = {k: torch.cat(v) for k, v in out.items()}
    torch.save(tensors, work / "latents.tmp.pt")
    (work / "latents.tmp.pt").replace(work / "latents.pt")
    log({"stage": "encode", "scenes": len(tensors["source"]), "scaling_factor": scale})


# -- 4. CLIP --------------------------------------------------------------------------------------
class LatentImageEncoder(torch.nn.Module):
    """A small CNN from 4×32×32 scaled latents to a unit embedding (the image tower of the CLIP stage)."""

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


def build_text_encoder(tokenizer):
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=128, intermediate_size=512, num_hidden_layers=4,
        num_attention_heads=4, max_position_embeddings=MAX_TOKENS, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    ))


def train_clip(work: Path, args, device, log) -> bool:
    data = torch.load(work / "latents.pt")
    tokenizer = tokenizer_v2()
    torch.manual_seed(args.seed)
    text, image = build_text_encoder(tokenizer).to(device).train(), LatentImageEncoder().to(device).train()
    projection = torch.nn.Linear(128, 128, bias=False).to(device)
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
        log({"stage": "clip", "done": True, "retrieval_top1": clip_retrieval(final, work, device)})
    return done


def _scale(work: Path) -> float:
    return json.loads((work / "vae" / "model" / "config.json").read_text())["scaling_factor"]


@torch.no_grad()
def clip_retrieval(holder, work: Path, device, n: int = 256) -> float:
    """Held-out scenes: how often a scene's own caption is the closest of n captions (chance 1/n)."""
    vae, tokenizer = load_vae(work, device), tokenizer_v2()
    held = _shard((TUNE_SEEDS - 4000, n))
    x = vae.encode(to_tensor(held["source"]).to(device)).latent_dist.mode() * vae.config.scaling_factor
    ids = tokenizer(list(held["caption"]), padding="max_length", max_length=MAX_TOKENS, return_tensors="pt").input_ids
    t = F.normalize(holder["projection"](holder["text"](ids.to(device)).pooler_output), dim=-1)
    return float(((holder["image"](x) @ t.T).argmax(dim=1) == torch.arange(n, device=device)).float().mean())


def load_text_encoder(work: Path, device):
    from transformers import CLIPTextModel

    return CLIPTextModel.from_pretrained(work / "clip" / "text_encoder").to(device).eval().requires_grad_(False)


# -- 5-6. UNets -----------------------------------------------------------------------------------
def build_unet(in_channels: int):
    from diffusers import UNet2DConditionModel

    # InstructPix2Pix's four levels at a small width on 32×32 latents, with cross- and
    # self-attention at the levels the method reads (latent/2 and latent/4: 16×16 and 8×8) and a
    # plain deepest level. InstructPix2Pix also has attention at the latent side; here it would
    # make each training step 7× slower on a CPU (9.7 s against 1.4 s at batch 32), for a level
    # whose maps the method does not use.
    return UNet2DConditionModel(
        sample_size=SIZE // 4, in_channels=in_channels, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64, 96, 96), cross_attention_dim=128, attention_head_dim=4,
        down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * 2 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 2 + ("UpBlock2D",),
    )


def scheduler():
    from diffusers import DDPMScheduler

    return DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000)


@torch.no_grad()
def embed(text_encoder, ids: torch.Tensor, device, chunk: int = 512) -> torch.Tensor:
    """The frozen text encoder's outputs for every token sequence, once (fp16, CPU)."""
    return torch.cat([text_encoder(ids[i:i + chunk].to(device))[0].half().cpu() for i in range(0, len(ids), chunk)])


def noise_loss(unet, sched, clean, condition, text, g, device, max_weight: float):
    """The noise loss at a uniform timestep, weighted by min(1/ᾱ_t, max_weight) (the v-prediction
    loss written for a noise predictor), so the high-noise steps where an edit decides WHICH
    object changes are not left with almost no weight."""
    noise = torch.randn(clean.shape, generator=g).to(device)
    t = torch.randint(0, 1000, (len(clean),), generator=g).to(device)
    noisy = sched.add_noise(clean, noise, t)
    x = noisy if condition is None else torch.cat([noisy, condition], dim=1)
    per_sample = (unet(x, t, encoder_hidden_states=text).sample - noise).pow(2).mean(dim=(1, 2, 3))
    weight = (1.0 / sched.alphas_cumprod.to(device)[t]).clamp(max=max_weight)
    return (per_sample * weight).mean()


def train_t2i(work: Path, args, device, log) -> bool:
    data, text_encoder = torch.load(work / "latents.pt"), load_text_encoder(work, device)
    captions = embed(text_encoder, data["caption_ids"], device)
    empty = embed(text_encoder, tokenizer_v2()([""], padding="max_length", max_length=MAX_TOKENS,
                                               return_tensors="pt").input_ids, device)
    images = data["source"].float() * _scale(work)
    torch.manual_seed(args.seed)
    unet = build_unet(4).to(device).train()
    optimiser = torch.optim.AdamW(unet.parameters(), lr=args.lr, weight_decay=1e-2)
    chunk = Chunk(work / "t2i", {"unet": unet}, optimiser, args.t2i_steps, 500, args, log)
    sched = scheduler()

    def step(g):
        pick = torch.randint(len(images), (args.batch,), generator=g)
        text = captions[pick].float()
        text[torch.rand(len(pick), generator=g) < 0.10] = empty.float()  # classifier-free guidance
        return noise_loss(unet, sched, images[pick].to(device), None, text.to(device), g, device, args.max_weight)

    done = chunk.run(step, "text-to-image")
    if done:
        chunk.ema["unet"].save_pretrained(work / "t2i" / "unet")
        log({"stage": "t2i", "done": True})
    return done


def widen_input(unet_4ch):
    """The text-to-image UNet with 8 input channels: the 4 new ones (the source image's latents)
    start at zero, so the model starts as the text-to-image model it was (InstructPix2Pix)."""
    unet = build_unet(8)
    state = unet_4ch.state_dict()
    weight = state.pop("conv_in.weight")
    unet.load_state_dict(state, strict=False)
    with torch.no_grad():
        unet.conv_in.weight.zero_()
        unet.conv_in.weight[:, :4] = weight
    return unet


def train_edit(work: Path, args, device, log) -> bool:
    from diffusers import UNet2DConditionModel

    data, text_encoder = torch.load(work / "latents.pt"), load_text_encoder(work, device)
    instructions = embed(text_encoder, data["instruction_ids"], device)
    empty = embed(text_encoder, tokenizer_v2()([""], padding="max_length", max_length=MAX_TOKENS,
                                               return_tensors="pt").input_ids, device)
    unet = widen_input(UNet2DConditionModel.from_pretrained(work / "t2i" / "unet")).to(device).train()
    optimiser = torch.optim.AdamW(unet.parameters(), lr=args.lr, weight_decay=1e-2)
    chunk = Chunk(work / "edit", {"unet": unet}, optimiser, args.edit_steps, 500, args, log)
    sched = scheduler()
    sources, targets = data["source"], data["target"]

    def step(g):
        pick = torch.randint(len(sources), (args.batch,), generator=g)
        text, source = instructions[pick].float(), sources[pick].float()
        drop = torch.rand(len(pick), generator=g)
        text[(drop < 0.05) | (drop >= 0.10) & (drop < 0.15)] = empty.float()  # text dropped (and both)
        source[(drop >= 0.05) & (drop < 0.15)] = 0.0  # image dropped (and both)
        return noise_loss(unet, sched, targets[pick].float().to(device), source.to(device), text.to(device), g,
                          device, args.max_weight)

    done = chunk.run(step, "edit")
    if done:
        chunk.ema["unet"].save_pretrained(work / "edit" / "unet")
        log({"stage": "edit", "done": True})
    return done


# -- 7. export ------------------------------------------------------------------------------------
def export(work: Path, out: Path, log) -> None:
    from diffusers import (
        EulerAncestralDiscreteScheduler,
        StableDiffusionInstructPix2PixPipeline,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTokenizer

    vae, text_encoder = load_vae(work, "cpu"), load_text_encoder(work, "cpu")
    tokenizer = CLIPTokenizer.from_pretrained(work / "clip" / "tokenizer")
    parts = dict(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                 scheduler=EulerAncestralDiscreteScheduler(beta_start=0.00085, beta_end=0.012,
                                                           beta_schedule="scaled_linear"),
                 safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    edit = StableDiffusionInstructPix2PixPipeline(unet=UNet2DConditionModel.from_pretrained(work / "edit" / "unet"),
                                                  **parts)
    edit.to(torch.float16).save_pretrained(out, safe_serialization=True)
    t2i = StableDiffusionPipeline(unet=UNet2DConditionModel.from_pretrained(work / "t2i" / "unet"), **parts)
    t2i.to(torch.float16).save_pretrained(work / "text_to_image", safe_serialization=True)
    log({"stage": "export", "out": str(out)})


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", default="runs/v2", help="folder of the run's data, states and logs")
    parser.add_argument("--stage", choices=STAGES + ("all",), default="all")
    parser.add_argument("--out", default="benchmarks/shapes_world/checkpoint_v2", help="where export writes")
    parser.add_argument("--scenes", type=int, default=40_000)
    parser.add_argument("--workers", type=int, default=2, help="processes generating scenes")
    parser.add_argument("--vae-steps", type=int, default=2000)
    parser.add_argument("--vae-batch", type=int, default=8)
    parser.add_argument("--vae-lr", type=float, default=1e-3)
    parser.add_argument("--clip-steps", type=int, default=4000)
    parser.add_argument("--clip-batch", type=int, default=128)
    parser.add_argument("--clip-lr", type=float, default=1e-3)
    parser.add_argument("--t2i-steps", type=int, default=20_000)
    parser.add_argument("--edit-steps", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--ema", type=float, default=0.999)
    parser.add_argument("--max-weight", type=float, default=50.0, help="clip of the min(1/ᾱ, ·) loss weight")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--save-every", type=int, default=500)
    parser.add_argument("--max-minutes", type=float, default=110.0, help="end this chunk (state saved) after this")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    work, device = Path(args.work), torch.device(args.device)
    work.mkdir(parents=True, exist_ok=True)
    log_file = (work / "train_log.jsonl").open("a")

    def log(record):
        log_file.write(json.dumps({"time": round(time.time()), **record}) + "\n")
        log_file.flush()

    log({"command": vars(args)})
    wanted = STAGES if args.stage == "all" else (args.stage,)
    for stage in wanted:
        if stage == "data":
            make_data(work, args.scenes, args.workers, log)
        elif stage == "vae" and not (work / "vae" / "model").exists():
            if not train_vae(work, args, device, log):
                return
        elif stage == "encode" and not (work / "latents.pt").exists():
            encode(work, device, log)
        elif stage == "clip" and not (work / "clip" / "text_encoder").exists():
            if not train_clip(work, args, device, log):
                return
        elif stage == "t2i" and not (work / "t2i" / "unet").exists():
            if not train_t2i(work, args, device, log):
                return
        elif stage == "edit" and not (work / "edit" / "unet").exists():
            if not train_edit(work, args, device, log):
                return
        elif stage == "export":
            export(work, Path(args.out), log)


if __name__ == "__main__":
    main()
