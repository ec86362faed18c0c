"""Record what ONE UNet forward sees, and stop it once nothing more is needed.

Captured attention layers get a :class:`CapturingAttnProcessor` (explicit softmax,
maps averaged over heads as they are produced); every other layer keeps its own
fused processor. Block outputs are recorded with forward hooks, and a hook on the
last needed block ends the forward early. Everything is removed afterwards, so the
UNet is left exactly as it was.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator, Optional

import torch
from diffusers.models.attention_processor import Attention
from torch import nn

from .layout import CapturePlan

SELF_ATTENTION_BUDGET = 256 * 2**20  # bytes of self-attention probabilities computed at once


class AttentionStore:
    """Maps from one forward pass, all float32 and averaged over heads.

    ``cross[name]``: B×N×T probabilities of each image position over the text tokens.
    ``self_sum`` / ``self_count``: running sum of B×N×N self-attention over layers.
    ``features[name]``: B×C×h×w outputs of the feature blocks.
    """

    def __init__(self) -> None:
        self.cross: dict[str, torch.Tensor] = {}
        self.self_sum: Optional[torch.Tensor] = None
        self.self_count = 0
        self.features: dict[str, torch.Tensor] = {}

    def add_self(self, probs: torch.Tensor) -> None:
        self.self_sum = probs if self.self_sum is None else self.self_sum + probs
        self.self_count += 1

    def take_rows(self, rows: slice) -> "AttentionStore":
        """A store holding only the given batch rows (the other rows' maps are dropped)."""
        kept = AttentionStore()
        kept.cross = {name: t[rows] for name, t in self.cross.items()}
        kept.self_sum = None if self.self_sum is None else self.self_sum[rows]
        kept.self_count = self.self_count
        kept.features = {name: t[rows] for name, t in self.features.items()}
        return kept

    @property
    def affinity(self) -> torch.Tensor:
        """Self-attention averaged over the captured layers; rows sum to 1."""
        if self.self_sum is None:
            raise RuntimeError("no self-attention was captured")
        return self.self_sum / self.self_count


class CapturingAttnProcessor:
    """Attention with an explicit softmax whose head-averaged probabilities go to a store.

    Same signature and result as diffusers' ``AttnProcessor``. Self-attention is
    computed a few heads at a time (as many as fit in ``SELF_ATTENTION_BUDGET``) and
    summed as it goes, so per-head N×N maps of all heads never exist at once for large N;
    cross-attention maps are N×77 and are computed for all heads together.
    """

    def __init__(self, store: AttentionStore, name: str):
        self.store = store
        self.name = name

    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: Optional[torch.Tensor] = None,
        attention_mask: Optional[torch.Tensor] = None,
        temb: Optional[torch.Tensor] = None,
        *args,
        **kwargs,
    ) -> torch.Tensor:
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channel, height * width).transpose(1, 2)
        batch, length, _ = hidden_states.shape
        is_cross = encoder_hidden_states is not None
        context = encoder_hidden_states if is_cross else hidden_states
        if attention_mask is not None:
            attention_mask = attn.prepare_attention_mask(attention_mask, context.shape[1], batch)
            attention_mask = attention_mask.view(batch, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if is_cross and attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)
        key = attn.to_k(context)
        value = attn.to_v(context)

        heads = attn.heads
        head_dim = key.shape[-1] // heads
        query, key, value = (t.view(batch, -1, heads, head_dim).transpose(1, 2) for t in (query, key, value))
        if getattr(attn, "norm_q", None) is not None:
            query = attn.norm_q(query)
        if getattr(attn, "norm_k", None) is not None:
            key = attn.norm_k(key)

        def probabilities(q: torch.Tensor, k: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
            # float32 maps whatever the networks compute in (autocast would make this matmul bf16)
            with torch.autocast(q.device.type, enabled=False):
                scores = torch.matmul(q.float(), k.float().transpose(-1, -2)) * attn.scale
                if mask is not None:
                    scores = scores + mask.float()
                return scores.softmax(dim=-1)

        if is_cross:
            probs = probabilities(query, key, attention_mask)  # B×heads×N×T
            out = torch.matmul(probs.to(value.dtype), value)
            self.store.cross[self.name] = probs.mean(dim=1)
        else:
            # heads in chunks small enough that a chunk's N×N maps stay under SELF_ATTENTION_BUDGET
            per_head = 4 * batch * length * length
            step = max(1, min(heads, SELF_ATTENTION_BUDGET // per_head))
            out = torch.empty_like(query)
            summed = None
            for h in range(0, heads, step):
                mask = None if attention_mask is None else attention_mask[:, h:h + step]
                p = probabilities(query[:, h:h + step], key[:, h:h + step], mask)  # B×chunk×N×N
                out[:, h:h + step] = torch.matmul(p.to(value.dtype), value[:, h:h + step])
                part = p.sum(dim=1)
                summed = part if summed is None else summed.add_(part)
            self.store.add_self(summed / heads)
        hidden_states = out.transpose(1, 2).reshape(batch, -1, heads * head_dim).to(query.dtype)
        hidden_states = attn.to_out[0](hidden_states)
        hidden_states = attn.to_out[1](hidden_states)
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


class StopForward(Exception):
    """Raised by the hook on the last needed block to end the UNet forward early."""


@contextmanager
def block_hooks(modules: dict[str, nn.Module], plan: CapturePlan, store: AttentionStore,
                features: Callable[[Any], torch.Tensor], early_exit: bool) -> Iterator[None]:
    """Forward hooks that keep the feature blocks' outputs in ``store`` (``features`` turns a block's
    output into B×C×h×w) and, with ``early_exit``, end the forward after ``plan.stop_after``;
    removed on exit, whatever happens. Shared by every backbone's capture."""
    def keep_output(name: str):
        def hook(_module, _inputs, output):
            store.features[name] = features(output)
        return hook

    def stop(_module, _inputs, _output):
        raise StopForward

    handles = []
    try:
        for name in plan.feature_modules:
            handles.append(modules[name].register_forward_hook(keep_output(name)))
        if early_exit:
            handles.append(modules[plan.stop_after].register_forward_hook(stop))
        yield
    finally:
        for handle in handles:
            handle.remove()


def _first_tensor(output: Any) -> torch.Tensor:
    """A UNet block's output (a tensor, or a tuple whose first element is the hidden states), in float32."""
    return (output[0] if isinstance(output, (tuple, list)) else output).float()


@contextmanager
def capturing(unet: nn.Module, plan: CapturePlan, early_exit: bool = True) -> Iterator[AttentionStore]:
    """Install processors and hooks for one forward; remove them on exit, whatever happens."""
    store = AttentionStore()
    original = unet.attn_processors
    replaced = dict(original)
    for name in plan.cross_layers + plan.self_layers:
        replaced[f"{name}.processor"] = CapturingAttnProcessor(store, name)
    try:
        unet.set_attn_processor(replaced)
        with block_hooks(dict(unet.named_modules()), plan, store, _first_tensor, early_exit):
            yield store
    finally:
        unet.set_attn_processor(dict(original))


def forward_and_capture(
    unet: nn.Module,
    sample: torch.Tensor,
    timestep: torch.Tensor,
    plan: CapturePlan,
    early_exit: bool = True,
    **conditioning: Any,
) -> tuple[Optional[torch.Tensor], AttentionStore]:
    """Run the UNet once on ``sample`` with ``conditioning`` (its text keywords); return its noise
    prediction (None after an early exit) and the store."""
    with capturing(unet, plan, early_exit) as store:
        try:
            noise = unet(sample, timestep, return_dict=False, **conditioning)[0]
        except StopForward:
            noise = None
    return noise, store
