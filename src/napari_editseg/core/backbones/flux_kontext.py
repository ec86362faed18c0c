"""FLUX.1 Kontext: a rectified-flow MMDiT (FluxTransformer2DModel) that edits by reading the input
image as tokens of its own, a T5 encoder whose tokens the joint attention sees, a CLIP encoder
for the pooled vector only, and a 16-channel VAE with shift and scale.

One forward: the packed noise tokens (target) followed by the packed image tokens (reference,
position ids with first coordinate 1), exactly as ``FluxKontextPipeline`` builds its first
transformer call. See :mod:`.joint_attention` for what is read from the joint attention.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from diffusers.models.attention_dispatch import dispatch_attention_fn
from diffusers.models.embeddings import apply_rotary_emb
from diffusers.utils.torch_utils import randn_tensor

from ..budget import Need, bytes_of, vae_needs
from ..capture import SELF_ATTENTION_BUDGET, AttentionStore, StopForward
from ..layout import CapturePlan
from ..settings import AUTO, SegmentationSettings
from .base import EditingModel
from .joint_attention import JointCapturePlan, JointLayout, JointTokens, joint_capturing, record_attention

GUIDANCE_SCALE = 3.5  # FluxKontextPipeline's default embedded guidance


class FluxCapturingProcessor:
    """``FluxAttnProcessor``'s steps (same projections, norms, rotary embedding and attention
    function, so the output is unchanged) plus :func:`record_attention` on the finished q and k.

    Works for both block kinds: double-stream blocks pass the text as ``encoder_hidden_states``
    and the joint sequence is built here as [text, image]; single-stream blocks pass it already
    concatenated in the same order.
    """

    def __init__(self, original: Any, store: AttentionStore, name: str, tokens: JointTokens, cross: bool,
                 affinity: bool):
        # imported here, not at the top: it takes seconds, and listing the families must not pay them
        from diffusers.models.transformers.transformer_flux import FluxAttnProcessor

        if type(original) is not FluxAttnProcessor:
            raise ValueError(f"attention {name!r} runs {type(original).__name__}, not FluxAttnProcessor; "
                             "napari-editseg captures only the plain FLUX attention (unload IP-adapters first)")
        self._attention_backend = original._attention_backend
        self._parallel_config = original._parallel_config
        self.store, self.name, self.tokens, self.cross, self.affinity = store, name, tokens, cross, affinity

    def __call__(self, attn: Any, hidden_states: torch.Tensor, encoder_hidden_states: Optional[torch.Tensor] = None,
                 attention_mask: Optional[torch.Tensor] = None, image_rotary_emb: Optional[Any] = None
                 ) -> Any:
        if attention_mask is not None:
            raise ValueError("napari-editseg's attention capture takes no attention mask (FLUX.1 Kontext uses none)")
        from diffusers.models.transformers.transformer_flux import _get_qkv_projections

        query, key, value, encoder_query, encoder_key, encoder_value = _get_qkv_projections(
            attn, hidden_states, encoder_hidden_states)
        query, key, value = (t.unflatten(-1, (-1, attn.head_dim)) for t in (query, key, value))
        query, key = attn.norm_q(query), attn.norm_k(key)
        if attn.added_kv_proj_dim is not None:
            encoder_query, encoder_key, encoder_value = (
                t.unflatten(-1, (-1, attn.head_dim)) for t in (encoder_query, encoder_key, encoder_value))
            encoder_query, encoder_key = attn.norm_added_q(encoder_query), attn.norm_added_k(encoder_key)
            query = torch.cat([encoder_query, query], dim=1)
            key = torch.cat([encoder_key, key], dim=1)
            value = torch.cat([encoder_value, value], dim=1)
        if image_rotary_emb is not None:
            query = apply_rotary_emb(query, image_rotary_emb, sequence_dim=1)
            key = apply_rotary_emb(key, image_rotary_emb, sequence_dim=1)

        record_attention(self.store, self.name, query, key, self.tokens, attn.head_dim ** -0.5, self.cross,
                         self.affinity)

        hidden_states = dispatch_attention_fn(query, key, value, attn_mask=attention_mask,
                                              backend=self._attention_backend, parallel_config=self._parallel_config)
        hidden_states = hidden_states.flatten(2, 3).to(query.dtype)
        if encoder_hidden_states is None:
            return hidden_states
        encoder_hidden_states, hidden_states = hidden_states.split_with_sizes(
            [encoder_hidden_states.shape[1], hidden_states.shape[1] - encoder_hidden_states.shape[1]], dim=1)
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states.contiguous()))
        return hidden_states, attn.to_add_out(encoder_hidden_states.contiguous())


class FluxKontext(EditingModel):
    """FLUX.1 Kontext [dev] and models of its layout.

    ``image_tokens`` auto = reference: at the first step (sigma 1) the target tokens are pure
    noise, so what their queries ask of the text depends on the image only through what earlier
    blocks copied from the reference; the reference tokens carry the image itself into every
    block, at every timestep, and sit on the same grid.
    """

    family = "flux-kontext"
    pipeline_class = "FluxKontextPipeline"
    denoiser_name = "transformer"
    components = ("transformer", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler")
    known_models = {
        "black-forest-labs/FLUX.1-Kontext-dev": "FLUX.1 Kontext [dev] (non-commercial licence; about 32 GB, large GPU)",
    }
    tokenizer_name = "tokenizer_2"  # T5: its tokens are the text keys of the joint attention
    pipeline_options = dict(image_encoder=None, feature_extractor=None)
    cuda_dtype = torch.bfloat16  # FLUX's activations overflow float16; its weights are published in bfloat16

    @property
    def transformer(self) -> torch.nn.Module:
        return self.pipe.transformer

    def check(self) -> None:
        """A Kontext-style editor takes the image as tokens: its transformer reads 2×2 patches of the
        VAE's latents (in_channels = 4 × latent channels), not latents with extra channels (FLUX.1 Fill
        and Depth/Canny take 384 and 128). A plain FLUX.1 [dev] checkpoint has the same configs and
        cannot be told apart here; its model_index names FluxPipeline, which the registry refuses."""
        config = self.transformer.config
        packed = 4 * self.vae.config.latent_channels
        if config.in_channels != packed or (config.out_channels or config.in_channels) != packed:
            raise ValueError(
                f"{self.source!r} is not a Kontext-style editing model: its transformer takes {config.in_channels} "
                f"input channels, a Kontext editor takes {packed} (2x2 patches of the image's own latents)"
            )
        if config.joint_attention_dim != self.pipe.text_encoder_2.config.d_model:
            raise ValueError(
                f"{self.source!r}: T5 width {self.pipe.text_encoder_2.config.d_model} does not match the "
                f"transformer's joint_attention_dim {config.joint_attention_dim}"
            )

    def layout(self) -> JointLayout:
        config = self.transformer.config
        return JointLayout(
            double=tuple(f"transformer_blocks.{i}" for i in range(config.num_layers)),
            single=tuple(f"single_transformer_blocks.{i}" for i in range(config.num_single_layers)),
            vae_factor=self.vae_factor, default_resolution=self.pipe.default_sample_size * self.vae_factor,
            auto_image_tokens="reference",
        )

    @property
    def max_tokens(self) -> int:
        """The pipeline's default (and largest) 512, or fewer when the T5 tokenizer holds fewer."""
        return min(512, int(self.tokenizer.model_max_length))

    @property
    def train_steps(self) -> int:
        return int(self.scheduler.config.num_train_timesteps)

    def resolve_timestep(self, settings: SegmentationSettings) -> SegmentationSettings:
        """auto = the first step: t = 1000, sigma 1 (pure noise) whatever the schedule's shift."""
        if settings.timestep == AUTO:
            return settings.replace(timestep=self.train_steps)
        if not 0 <= settings.timestep <= self.train_steps:
            raise ValueError(f"setting 'timestep'={settings.timestep}: must lie in [0, {self.train_steps}] "
                             f"(sigma = timestep / {self.train_steps})")
        return settings

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """The mode of the posterior, shifted and scaled: the pipeline's own ``_encode_vae_image``."""
        return self.pipe._encode_vae_image(pixels, generator=None).to(self.dtype)

    def encode_text(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """T5 token embeddings (the joint attention's text) and CLIP's pooled vector, as the pipeline makes them."""
        prompt_embeds, pooled, _ = self.pipe.encode_prompt(prompt=texts, prompt_2=None, device=self.device,
                                                           max_sequence_length=self.max_tokens)
        return {"prompt_embeds": prompt_embeds, "pooled_projections": pooled}

    def noisy_latents(self, settings: SegmentationSettings, image_latents: torch.Tensor, rows: int
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """Noise drawn as the pipeline's ``prepare_latents`` draws it (so the first step matches it).
        A later timestep (a study setting) starts the target from the image's own latents at
        sigma = t/1000, as flow matching's ``scale_noise`` does: (1 - sigma) x + sigma noise."""
        generator = torch.Generator("cpu").manual_seed(settings.seed)
        shape = (settings.noise_samples, self.vae.config.latent_channels, *image_latents.shape[-2:])
        noise = randn_tensor(shape, generator=generator, device=self.device, dtype=image_latents.dtype)
        latents = noise
        if settings.timestep != self.train_steps:
            sigma = settings.timestep / self.train_steps
            latents = (1.0 - sigma) * image_latents.expand_as(noise) + sigma * noise
        return latents.repeat(rows, 1, 1, 1), torch.tensor(float(settings.timestep), device=self.device)

    def forward(self, noisy: torch.Tensor, image_latents: torch.Tensor, timestep: torch.Tensor,
                text: dict[str, torch.Tensor], plan: JointCapturePlan, early_exit: bool
                ) -> tuple[Optional[torch.Tensor], AttentionStore]:
        batch, channels, h, w = noisy.shape
        pipe = self.pipe
        target = pipe._pack_latents(noisy, batch, channels, h, w)
        reference = pipe._pack_latents(image_latents, batch, channels, h, w)
        target_ids = pipe._prepare_latent_image_ids(batch, h // 2, w // 2, self.device, noisy.dtype)
        reference_ids = target_ids.clone()
        reference_ids[..., 0] = 1  # Kontext: the reference image is the same grid at first coordinate 1
        prompt_embeds = text["prompt_embeds"]
        guidance = (torch.full([batch], GUIDANCE_SCALE, device=self.device, dtype=torch.float32)
                    if self.transformer.config.guidance_embeds else None)
        n = target.shape[1]
        tokens = JointTokens(text=prompt_embeds.shape[1], target=n, reference=reference.shape[1],
                             grid=(h // 2, w // 2), read=plan.image_tokens)
        with joint_capturing(self.transformer, plan, tokens, FluxCapturingProcessor, early_exit) as store:
            try:
                out = self.transformer(
                    hidden_states=torch.cat([target, reference], dim=1),
                    timestep=timestep.expand(batch).to(noisy.dtype) / 1000, guidance=guidance,
                    pooled_projections=text["pooled_projections"], encoder_hidden_states=prompt_embeds,
                    txt_ids=torch.zeros(prompt_embeds.shape[1], 3, device=self.device, dtype=prompt_embeds.dtype),
                    img_ids=torch.cat([target_ids, reference_ids]), return_dict=False,
                )[0]
                noise = pipe._unpack_latents(out[:, :n], h * self.vae_factor, w * self.vae_factor, self.vae_factor)
            except StopForward:
                noise = None
        return noise, store

    def memory_needs(self, settings: SegmentationSettings, plan: CapturePlan, size: tuple[int, int], rows: int,
                     expressions: int) -> list[Need]:
        """Rough terms from the configs: the transformer's activations (a dozen inner-width buffers
        per token, the single-stream MLP four wide), the captured probabilities of one head chunk,
        the maps kept, and the features on the work grid."""
        config = self.transformer.config
        inner = config.num_attention_heads * config.attention_head_dim
        grid = (size[0] // self.vae_factor // 2, size[1] // self.vae_factor // 2)
        n = grid[0] * grid[1]
        length = self.max_tokens + 2 * n
        element = bytes_of(self.dtype)
        chunk = rows * n * length * 4 * max(1, min(config.num_attention_heads,
                                                   SELF_ATTENTION_BUDGET // max(1, 4 * rows * n * length)))
        work = settings.work_resolution
        where = f"resolution (now {settings.resolution})" + (
            f" or noise_samples (now {settings.noise_samples})" if settings.noise_samples > 1 else "")
        return [
            Need(2 * rows * n * n * 4 + 3 * chunk, f"joint-attention maps of {n} image tokens at resolution="
                 f"{settings.resolution}", where),
            Need(rows * n * self.max_tokens * 4 * len(plan.cross_layers), "image-to-text maps of "
                 f"{len(plan.cross_layers)} attention blocks", f"attention_blocks or {where}"),
            Need(int(rows * length * inner * element * 12), f"transformer activations for {rows} rows at "
                 f"resolution={settings.resolution}", where),
            vae_needs(self, size, settings.resolution),
            Need(rows * n * inner * 4 * len(plan.feature_modules) + 3 * expressions * inner
                 * len(plan.feature_modules) * work * work * 4, f"features on the {work}x{work} work grid",
                 f"work_resolution (now {work}) or feature_blocks"),
        ]
