"""Loading an instruction-editing model (hub id, local folder or HF cache), device and dtype."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import socket
import subprocess
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Union

import diffusers
import torch
from huggingface_hub import constants as hub_constants
from huggingface_hub.errors import GatedRepoError, HfHubHTTPError

from .backbones import UnknownPipelineError, backbone_for
from .backbones.base import AUTOCAST_BF16, EditingModel
from .names import DEFAULT_MODEL, DEMO_MODEL

HUB_TIMEOUT = 5.0  # seconds the hub gets to answer once before loading uses the cache alone
_NETWORK_LIBRARIES = ("httpx", "httpx2", "httpcore", "requests", "urllib3")


def demo_model_folder() -> Path:
    """Where the demo model (:data:`DEMO_MODEL`) is installed."""
    return Path(__file__).resolve().parents[1] / "demo_model"


def hub_unreachable(error: BaseException) -> bool:
    """Whether the hub client got no answer at all (no network, no DNS, a timeout), whichever HTTP library
    the installed huggingface_hub uses: requests (0.x), httpx (1.x) or httpx2 (2.x), whose errors are not
    all OSErrors. An answer from the hub (404, 401, gated) is not this."""
    if isinstance(error, HfHubHTTPError):
        return False
    if isinstance(error, (ConnectionError, TimeoutError, socket.gaierror)):  # also OfflineModeIsEnabled
        return True
    return any(kind.__module__.split(".")[0] in _NETWORK_LIBRARIES for kind in type(error).__mro__[:-2])


def hub_answers(repo_id: str, timeout: float = HUB_TIMEOUT) -> bool:
    """Ask the hub about ``repo_id`` once, without retries; False when no answer came within ``timeout``."""
    from huggingface_hub import HfApi

    try:
        HfApi().model_info(repo_id, timeout=timeout)
    except Exception as error:  # any answer, even "not found", means the hub is there
        if hub_unreachable(error):
            return False
    return True


class ModelNotAvailableError(OSError):
    """The model's weights are neither on this machine nor downloadable now."""


def choose_device(device: Union[str, torch.device] = "auto") -> torch.device:
    """``auto``: CUDA, then Apple MPS, then CPU."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        chosen = torch.device(device)
    except (RuntimeError, TypeError):
        chosen = None
    if chosen is None or chosen.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device {device!r} is not one of auto, cpu, cuda, cuda:N, mps")
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for, but torch sees no CUDA GPU here (try --device cpu)")
    if chosen.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError("device 'mps' was asked for, but torch sees no Apple GPU here (try --device cpu)")
    return chosen


_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
           "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
# ``auto`` runs denoisers at least this large in bfloat16 on CPUs that compute it natively: on small
# ones (the shapes-world proxy, 2.2 M parameters) bfloat16 costs more than it saves (1.1× slower)
BF16_MIN_PARAMETERS = 100_000_000


def native_bf16() -> bool:
    """Whether this CPU computes bfloat16 in hardware (where torch's bf16 kernels pay off).

    Linux: the ``avx512_bf16`` or ``amx_bf16`` flag in /proc/cpuinfo (Intel Cooper Lake and
    Sapphire Rapids on, AMD Zen 4 on). macOS: ``hw.optional.arm.FEAT_BF16`` (Apple M2 on).
    Elsewhere, or when the check cannot be made: False.
    """
    try:
        if platform.system() == "Linux":
            flags = Path("/proc/cpuinfo").read_text().split()
            return "avx512_bf16" in flags or "amx_bf16" in flags
        if platform.system() == "Darwin":
            done = subprocess.run(["sysctl", "-n", "hw.optional.arm.FEAT_BF16"], capture_output=True, text=True,
                                  timeout=5)
            return done.stdout.strip() == "1"
    except (OSError, subprocess.SubprocessError):
        pass
    return False


def choose_dtype(dtype: Union[str, torch.dtype], device: torch.device, cuda_default: torch.dtype = torch.float16
                 ) -> tuple[torch.dtype, Optional[torch.dtype]]:
    """(weights' dtype, autocast dtype or None) asked for by ``dtype``.

    ``auto``: ``cuda_default`` on CUDA (the family's: float16, or bfloat16 for models that
    overflow float16), float32 elsewhere — and the loader turns real-size models into
    bfloat16 on a CPU that computes it natively (see :func:`load_editing_model`).
    ``float32``/``float16``/``bfloat16`` cast the weights; ``bf16-autocast`` keeps float32
    weights and runs the networks under bfloat16 autocast (CPU only).
    """
    if isinstance(dtype, torch.dtype):
        return dtype, None
    if dtype == "auto":
        return (cuda_default if device.type == "cuda" else torch.float32), None
    if dtype == AUTOCAST_BF16:
        if device.type != "cpu":
            raise ValueError(f"dtype {AUTOCAST_BF16!r} is for the CPU; on {device.type} use float16 or bfloat16")
        return torch.float32, torch.bfloat16
    if dtype not in _DTYPES:
        raise ValueError(f"dtype {dtype!r} is not one of auto, {AUTOCAST_BF16}, {', '.join(_DTYPES)}")
    return _DTYPES[dtype], None


def bf16_pays_off(device: torch.device, denoiser: Any) -> bool:
    """``auto`` on the CPU: bfloat16 weights when the CPU computes bfloat16 natively and the denoiser
    is real-size. Measured (docs/performance.md): 1.9–2.1× faster on InstructPix2Pix's
    architecture, masks of a trained model as float32's (mean IoU 0.98)."""
    parameters = sum(p.numel() for p in denoiser.parameters())
    return device.type == "cpu" and native_bf16() and parameters >= BF16_MIN_PARAMETERS


def pipeline_class_of(model: str, local_files_only: bool) -> str:
    """The pipeline class a model folder or hub repository names in its ``model_index.json``."""
    folder = Path(model)
    if folder.is_dir():
        index = folder / "model_index.json"
    elif local_files_only:  # the cache alone: hf_hub_download would still ask the hub for its agent registry
        from huggingface_hub import try_to_load_from_cache
        from huggingface_hub.errors import LocalEntryNotFoundError

        cached = try_to_load_from_cache(model, "model_index.json")
        if not isinstance(cached, str):
            raise LocalEntryNotFoundError(f"{model!r} is not in the Hugging Face cache")
        index = Path(cached)
    else:
        from huggingface_hub import hf_hub_download

        index = Path(hf_hub_download(model, "model_index.json"))
    try:
        return str(json.loads(index.read_text()).get("_class_name", ""))
    except (OSError, ValueError, AttributeError) as error:
        raise ValueError(f"{model!r}: its model_index.json cannot be read ({error})") from None


@contextlib.contextmanager
def _hub_offline(offline: bool) -> Iterator[None]:
    """huggingface_hub's offline mode while a load reads the cache alone: local_files_only stops
    downloads, but the client still fetches its agent registry from the hub to build request headers
    (a record's replay must not contact the hub at all)."""
    before = hub_constants.HF_HUB_OFFLINE
    hub_constants.HF_HUB_OFFLINE = before or offline
    try:
        yield
    finally:
        hub_constants.HF_HUB_OFFLINE = before


def _quietly(load: Callable[[], Any]) -> Any:
    """Run ``load`` with transformers' warnings about optional image processors we never use
    silenced, to keep the user's terminal quiet."""
    from transformers.utils import logging as transformers_logging

    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()
    try:
        return load()
    finally:
        transformers_logging.set_verbosity(verbosity)


def _dtype_keyword() -> str:
    """diffusers renamed ``torch_dtype`` to ``dtype`` (deprecating the old name); use what it takes."""
    from diffusers.utils import deprecation_utils

    return "dtype" if hasattr(deprecation_utils, "_resolve_dtype") else "torch_dtype"


_DTYPE_KEYWORD = _dtype_keyword()


def _looks_like_path(model: str) -> bool:
    """A hub id is ``name`` or ``owner/name``; anything else is meant as a folder."""
    return (
        Path(model).expanduser().exists()
        or model.startswith((".", "~", "/"))
        or model.count("/") > 1
        or "\\" in model
    )


def _load_error(error: Exception, model: str, is_folder: bool, offline: bool, allow_pickle: bool,
                unanswered: bool = False) -> Exception:
    """The one-line error a user sees for a loader's ``error``: what went wrong and what to do."""
    why = " ".join(str(error).split())[:300]
    if not allow_pickle and re.search(r"no file named \S+\.safetensors|necessary `safetensors` weights", why):
        return ValueError(
            f"model {model!r} has no safetensors weights for every part ({why}); pickle-based weights can run "
            "code when loaded: convert them, or pass allow_pickle=True (--allow-pickle-weights) if you trust "
            "the source"
        )
    if is_folder:
        return ValueError(f"could not load the model folder {model!r}: {type(error).__name__}: {why}")
    if isinstance(error, GatedRepoError):  # FLUX.1 Kontext [dev], CosXL: the licence must be accepted first
        return ModelNotAvailableError(
            f"model {model!r} is gated on the Hugging Face hub: accept its licence at "
            f"https://huggingface.co/{model}, log in on this machine (`hf auth login`), then run this again"
        )
    if not isinstance(error, (OSError, ValueError)):
        return ValueError(f"could not load model {model!r}: {type(error).__name__}: {why}")
    tried = (f"the Hugging Face cache (the hub could not be reached: asked once, {HUB_TIMEOUT:g} s timeout)"
             if unanswered else "the Hugging Face cache only (offline mode)" if offline
             else "the Hugging Face cache and the hub")
    return ModelNotAvailableError(
        f"weights for model {model!r} are not available: tried {tried} "
        f"({hub_constants.HF_HUB_CACHE}). Fix: on a machine with internet run "
        f"`hf download {model}` (or run this command once there) and copy the cache, "
        "or pass a local diffusers folder with --model PATH "
        f"(offline demo: --model {DEMO_MODEL} on --sample shapes)."
    )


def load_editing_model(
    model: str = DEFAULT_MODEL,
    device: Union[str, torch.device] = "auto",
    dtype: Union[str, torch.dtype] = "auto",
    local_files_only: Optional[bool] = None,
    allow_pickle: bool = False,
) -> EditingModel:
    """Load the components the model's family reads (denoiser, VAE, text encoders, tokenizers,
    scheduler); nothing else is downloaded.

    ``model`` is a hub id (fetched once into the Hugging Face cache), a cached hub id
    (used offline), or a local folder in diffusers layout. ``HF_HUB_OFFLINE=1`` or
    ``local_files_only=True`` never touches the network. Weights are read from safetensors
    files only: pickle-based ``.bin``/``.pt`` weights can run code when loaded, so they are
    refused unless ``allow_pickle=True`` (CLI: ``--allow-pickle-weights``) for a source you trust.
    """
    if not isinstance(model, (str, os.PathLike)) or not str(model).strip():
        raise ValueError(f"model must be a hub id or a folder path (text), not {model!r}")
    torch_device = choose_device(device)
    torch_dtype, autocast = choose_dtype(dtype, torch_device)
    model = os.fspath(model)
    if model == DEMO_MODEL:
        model = str(demo_model_folder())
    folder = Path(model).expanduser()
    if _looks_like_path(model):
        if not folder.is_dir():
            raise ModelNotAvailableError(f"model folder {model!r} does not exist")
        if not (folder / "model_index.json").is_file():
            raise ValueError(
                f"{model!r} is not a diffusers model folder (no model_index.json); "
                "save one with pipeline.save_pretrained(folder)"
            )
        model = str(folder)
    offline = bool(local_files_only) or hub_constants.HF_HUB_OFFLINE
    unanswered = not offline and not folder.is_dir() and not hub_answers(model)
    offline = offline or unanswered  # the cache alone: no retries against a hub that did not answer
    try:
        with _hub_offline(offline):
            family = backbone_for(pipeline_class_of(model, offline))
            torch_dtype, autocast = choose_dtype(dtype, torch_device, family.cuda_dtype)
            pipe = _quietly(lambda: getattr(diffusers, family.pipeline_class).from_pretrained(
                model, **{_DTYPE_KEYWORD: torch_dtype}, local_files_only=offline,
                use_safetensors=None if allow_pickle else True, **family.pipeline_options,
            ))
    except UnknownPipelineError:
        raise
    except Exception as error:  # every loader and weight format fails its own way; the user needs one line
        raise _load_error(error, model, folder.is_dir(), offline, allow_pickle, unanswered) from None
    loaded = family(pipe=pipe, source=model, device=torch_device, dtype=torch_dtype, autocast=autocast)
    if dtype == "auto" and bf16_pays_off(torch_device, loaded.denoiser):
        loaded.dtype = torch.bfloat16
        for part in loaded.networks():
            part.to(torch.bfloat16)
    return loaded.prepare()
