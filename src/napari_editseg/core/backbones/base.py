"""The backbone seam: what one-step segmentation needs from an editing model, whatever its architecture.

An :class:`EditingModel` wraps one loaded diffusers pipeline and answers steps 1-4 of
docs/method.md for its family: encode the image, encode the instruction, prepare the first
step's noise, and run ONE denoiser forward that records, in an
:class:`~napari_editseg.core.capture.AttentionStore`, the image→text attention (the prior),
the image→image attention (the affinity) and the feature blocks' outputs, stopping after the
last block it needs. Its *layout* resolves the "auto" settings from the model's configs and
makes the :class:`~napari_editseg.core.layout.CapturePlan`. Stages 5-7 (prior, prototypes,
mask) read only the store and the plan, so they never see which backbone ran.

A family is one subclass in its own module plus one line in
:data:`napari_editseg.core.backbones.BACKBONES` (docs/method.md, "Adding a backbone").
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass, field
from typing import Any, ClassVar, Optional, Protocol

import torch

from ..budget import Need
from ..capture import AttentionStore
from ..layout import CapturePlan
from ..settings import SegmentationSettings

AUTOCAST_BF16 = "bf16-autocast"  # float32 weights; the networks compute in bfloat16


class Layout(Protocol):
    """Where things are inside a denoiser, and the "auto" settings they imply."""

    vae_factor: int
    blocks: tuple[str, ...]  # the denoiser's top-level blocks in the order they run (early exit stops after one)

    @property
    def min_multiple(self) -> int:
        """Smallest image-side multiple at which every level of the denoiser divides evenly."""

    def resolve(self, settings: SegmentationSettings) -> SegmentationSettings:
        """Every "auto" size or block setting replaced by its value for this model; others checked."""

    def plan(self, settings: SegmentationSettings) -> CapturePlan:
        """What one forward at these (resolved) settings must record, and where it may stop."""


@dataclass
class EditingModel:
    """One loaded editing pipeline behind the interface the segmenter uses.

    Subclasses set the class attributes and implement the methods that raise
    ``NotImplementedError`` here; everything else (device, precision, the lock) is shared.
    """

    pipe: Any  # the diffusers pipeline, holding every component
    source: str
    device: torch.device
    dtype: torch.dtype
    autocast: Optional[torch.dtype] = None  # what the networks compute in, when not their weights' dtype
    # one forward at a time: capture swaps the denoiser's attention processors for the call's own
    lock: Any = field(default_factory=threading.RLock, repr=False, compare=False)

    family: ClassVar[str] = ""  # a short name for docs, records and errors
    pipeline_class: ClassVar[str] = ""  # the diffusers pipeline class: model_index.json's "_class_name"
    denoiser_name: ClassVar[str] = ""  # the pipeline component that is run once
    # the pipeline's components this family loads (the hub downloads their folders and nothing else)
    components: ClassVar[tuple[str, ...]] = ()
    known_models: ClassVar[dict[str, str]] = {}  # hub ids of this family, with a title, for the widget's list
    tokenizer_name: ClassVar[str] = "tokenizer"  # the tokenizer of the text the prior attends to
    pipeline_options: ClassVar[dict] = {}  # extra keywords for the pipeline's from_pretrained
    cuda_dtype: ClassVar[torch.dtype] = torch.float16  # what dtype="auto" loads on a CUDA GPU

    # -- shared ---------------------------------------------------------------------
    @property
    def denoiser(self) -> torch.nn.Module:
        return getattr(self.pipe, self.denoiser_name)

    @property
    def vae(self) -> Any:
        return self.pipe.vae

    @property
    def scheduler(self) -> Any:
        return self.pipe.scheduler

    @property
    def tokenizer(self) -> Any:
        return getattr(self.pipe, self.tokenizer_name)

    @property
    def vae_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def networks(self) -> list[torch.nn.Module]:
        """Every network of the pipeline (denoiser, VAE, text encoders)."""
        return [part for part in self.pipe.components.values() if isinstance(part, torch.nn.Module)]

    @property
    def precision(self) -> str:
        """How the networks run, as the ``dtype`` argument that loads them so again."""
        if self.autocast == torch.bfloat16 and self.dtype == torch.float32:
            return AUTOCAST_BF16
        return str(self.dtype).replace("torch.", "")

    def compute(self) -> contextlib.AbstractContextManager:
        """The context the networks run in: autocast to ``autocast`` when set, else nothing."""
        if self.autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast)

    def prepare(self) -> "EditingModel":
        """Check the model, then move it to its device for inference only."""
        self.check()
        for part in self.networks():
            part.to(self.device).eval().requires_grad_(False)
        return self

    # -- per family -----------------------------------------------------------------
    def check(self) -> None:
        """Refuse a model of this pipeline class that cannot be read as an editor (one line why)."""
        raise NotImplementedError

    def layout(self) -> Layout:
        raise NotImplementedError

    @property
    def max_tokens(self) -> int:
        """Tokens of the instruction the denoiser sees (longer instructions are truncated)."""
        raise NotImplementedError

    def resolve_timestep(self, settings: SegmentationSettings) -> SegmentationSettings:
        """``timestep="auto"`` → the scheduler's first step; any other value checked against its range."""
        raise NotImplementedError

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """B×3×H×W in [-1, 1] (on the device, in the weights' dtype) → the latents the editor conditions on."""
        raise NotImplementedError

    def encode_text(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """The texts' conditioning as the pipeline builds it: tensors with one row per text."""
        raise NotImplementedError

    def noisy_latents(self, settings: SegmentationSettings, image_latents: torch.Tensor, rows: int
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """``rows`` × ``noise_samples`` noise latents for one image, as the pipeline's first step makes
        them (``seed``; at a later ``timestep``, the image's latents noised to it), and the timestep."""
        raise NotImplementedError

    def forward(self, noisy: torch.Tensor, image_latents: torch.Tensor, timestep: torch.Tensor,
                text: dict[str, torch.Tensor], plan: CapturePlan, early_exit: bool
                ) -> tuple[Optional[torch.Tensor], AttentionStore]:
        """ONE denoiser forward over rows of noise latents, image latents and text, capturing ``plan``.

        Returns the noise prediction as B×C×h×w on the latent grid (None after an early exit) and
        the store: ``cross[layer]`` B×N×T image→text probabilities, the image→image affinity,
        ``features[block]`` B×C×h'×w'. The denoiser is left exactly as it was.
        """
        raise NotImplementedError

    def memory_needs(self, settings: SegmentationSettings, plan: CapturePlan, size: tuple[int, int], rows: int,
                     expressions: int) -> list[Need]:
        """The memory one forward of ``rows`` at model input ``size`` and the later stages hold."""
        raise NotImplementedError
