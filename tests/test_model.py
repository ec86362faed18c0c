"""Loading: hub id, HF cache, local folder; device and dtype; clear errors when weights are missing."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from napari_editseg import EditSegmenter, ModelNotAvailableError
from napari_editseg.core.model import choose_device, choose_dtype
from napari_editseg.testing import build_tiny_pipeline


def test_a_missing_folder_is_named(tmp_path):
    with pytest.raises(ModelNotAvailableError, match="does not exist"):
        EditSegmenter.from_pretrained(str(tmp_path / "nowhere"))


def test_a_folder_that_is_not_a_diffusers_model_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match="no model_index.json"):
        EditSegmenter.from_pretrained(str(tmp_path))


def test_a_text_to_image_unet_is_not_an_editing_model(tmp_path):
    build_tiny_pipeline(in_channels=4).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="not an InstructPix2Pix-style editing model.*4 input channels"):
        EditSegmenter.from_pretrained(str(tmp_path), device="cpu")


def test_missing_weights_give_one_clear_error_offline():
    with pytest.raises(ModelNotAvailableError) as info:
        EditSegmenter.from_pretrained("timbrooks/instruct-pix2pix", local_files_only=True)
    message = str(info.value)
    assert "timbrooks/instruct-pix2pix" in message and "hf download" in message and "--model" in message
    assert info.value.__cause__ is None and info.value.__suppress_context__  # no chained traceback wall


def test_a_gated_hub_model_says_how_to_get_access(monkeypatch):
    """FLUX.1 Kontext [dev] and CosXL are gated: the hub's 401 becomes one line saying what to do.
    (The hub is unreachable here, so its answer is played by raising the error it gives.)"""
    from huggingface_hub.errors import GatedRepoError

    import napari_editseg.core.model as model_module

    def gated(*_args, **_kwargs):
        error = GatedRepoError.__new__(GatedRepoError)  # without the HTTP response its __init__ wants
        Exception.__init__(error, "401 Client Error: access to model is restricted")
        raise error

    monkeypatch.setattr(model_module, "pipeline_class_of", gated)
    with pytest.raises(ModelNotAvailableError, match="gated.*accept its licence.*hf auth login") as info:
        EditSegmenter.from_pretrained("black-forest-labs/FLUX.1-Kontext-dev")
    assert "\n" not in str(info.value)


def test_an_unknown_setting_fails_before_loading(tmp_path):
    with pytest.raises(ValueError, match="unknown setting"):
        EditSegmenter.from_pretrained(str(tmp_path / "nowhere"), treshold=0.3)


def test_a_cached_hub_model_loads_offline(tiny_model_dir, tmp_path):
    """The Hugging Face cache layout (models--owner--name/snapshots/REV + refs/main), offline."""
    repo = tmp_path / "hub" / "models--someone--tiny-ip2p"
    shutil.copytree(tiny_model_dir, repo / "snapshots" / "0123abcd")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    code = (
        "from napari_editseg import EditSegmenter; import numpy as np\n"
        "s = EditSegmenter.from_pretrained('someone/tiny-ip2p', device='cpu')\n"
        "s.set_image(np.zeros((20, 20, 3), np.uint8)); print(s.segment('a thing').mask.shape)"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "hub")}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "(20, 20)" in done.stdout


def test_device_and_dtype_choices():
    assert choose_device("auto").type == ("cuda" if torch.cuda.is_available() else
                                          "mps" if torch.backends.mps.is_available() else "cpu")
    cpu = torch.device("cpu")
    assert choose_dtype("auto", torch.device("cuda")) == (torch.float16, None)
    assert choose_dtype("auto", torch.device("cuda"), torch.bfloat16) == (torch.bfloat16, None)  # a family's own
    assert choose_dtype("float16", torch.device("cuda"), torch.bfloat16) == (torch.float16, None)
    assert choose_dtype("auto", torch.device("mps")) == (torch.float32, None)
    assert choose_dtype("auto", cpu) == (torch.float32, None)  # the loader may still pick bfloat16 (below)
    assert choose_dtype("float32", cpu) == (torch.float32, None)
    assert choose_dtype("bf16-autocast", cpu) == (torch.float32, torch.bfloat16)
    assert choose_dtype("bf16", cpu) == (torch.bfloat16, None)
    with pytest.raises(ValueError, match="is for the CPU"):
        choose_dtype("bf16-autocast", torch.device("cuda"))
    with pytest.raises(ValueError, match="dtype 'half-ish'"):
        choose_dtype("half-ish", cpu)
    with pytest.raises(ValueError, match="not one of auto"):
        choose_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU"):
            choose_device("cuda")


def test_a_reduced_precision_model_segments(tiny_model_dir, picture):
    """The fp16-on-GPU path, exercised here in bfloat16 (CPU has no fast fp16 kernels)."""
    s = EditSegmenter.from_pretrained(str(tiny_model_dir), device="cpu", dtype="bfloat16")
    assert s.model.unet.dtype == torch.bfloat16
    s.set_image(picture)
    result = s.segment("the disc")
    assert result.scores.dtype == np.float32 and np.isfinite(result.scores).all()


def test_another_unet_layout_works_with_no_overrides(tiny_two_level_dir, picture):
    """A two-level UNet (diffusers' own test layout): "auto" picks its analogous layers."""
    s = EditSegmenter.from_pretrained(str(tiny_two_level_dir), device="cpu")
    s.set_image(picture)
    result = s.segment("the disc")
    assert result.mask.shape == picture.shape[:2]
    assert result.settings.prior_resolutions == (16,) and result.settings.feature_blocks == ("up_blocks.0",)


def test_native_bf16_reads_the_cpu_flags(monkeypatch, tmp_path):
    from napari_editseg.core import model as model_module

    monkeypatch.setattr(model_module.platform, "system", lambda: "Linux")
    for flags, expected in (("fpu avx512f avx512_bf16 sse", True), ("fpu amx_bf16", True), ("fpu avx2 avx512f", False)):
        cpuinfo = tmp_path / "cpuinfo"
        cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
        monkeypatch.setattr(model_module, "Path", lambda p, f=cpuinfo: f if p == "/proc/cpuinfo" else Path(p))
        assert model_module.native_bf16() is expected


def test_auto_runs_real_size_models_in_bf16_on_a_bf16_cpu_and_small_ones_in_float32(tiny_model_dir, monkeypatch):
    from napari_editseg.core import model as model_module

    monkeypatch.setattr(model_module, "native_bf16", lambda: True)
    small = EditSegmenter.from_pretrained(str(tiny_model_dir), device="cpu")
    assert (small.model.dtype, small.model.unet.dtype) == (torch.float32, torch.float32)
    monkeypatch.setattr(model_module, "BF16_MIN_PARAMETERS", 0)  # the tiny model counts as real-size
    large = EditSegmenter.from_pretrained(str(tiny_model_dir), device="cpu")
    assert large.model.dtype == torch.bfloat16 and large.model.precision == "bfloat16"
    assert {m.dtype for m in (large.model.unet, large.model.vae, large.model.text_encoder)} == {torch.bfloat16}
    monkeypatch.setattr(model_module, "native_bf16", lambda: False)
    assert EditSegmenter.from_pretrained(str(tiny_model_dir), device="cpu").model.dtype == torch.float32
    assert EditSegmenter.from_pretrained(str(tiny_model_dir), device="cpu", dtype="float32").model.dtype == \
        torch.float32


def test_bf16_autocast_computes_the_networks_in_bf16_and_keeps_maps_float32(tiny_model_dir, picture):
    plain = EditSegmenter.from_pretrained(str(tiny_model_dir), device="cpu", dtype="float32")
    fast = EditSegmenter.from_pretrained(str(tiny_model_dir), device="cpu", dtype="bf16-autocast")
    assert fast.model.dtype == torch.float32 and fast.model.autocast == torch.bfloat16
    seen = []
    for segmenter in (plain, fast):
        hooks = [segmenter.model.unet.conv_in.register_forward_hook(lambda m, i, o: seen.append(o.dtype)),
                 segmenter.model.vae.encoder.conv_in.register_forward_hook(lambda m, i, o: seen.append(o.dtype))]
        try:
            segmenter.set_image(picture)
            forward = segmenter.forward(["the red disc"], prior_source="attention")  # one denoiser call
        finally:
            for hook in hooks:
                hook.remove()
        assert all(t.dtype == torch.float32 for t in forward.store.features.values())
        assert all(t.dtype == torch.float32 for t in forward.store.cross.values())
        assert forward.store.affinity.dtype == torch.float32
        segmenter.segment("the red disc")  # stages 5-7 run on what the bf16 forward captured
    assert seen == [torch.float32, torch.float32, torch.bfloat16, torch.bfloat16]  # VAE then UNet, each mode


def test_a_pipeline_class_no_family_reads_is_refused_in_one_line(tmp_path):
    """A plain Stable Diffusion folder (text-to-image): the registry names what it reads."""
    from diffusers import StableDiffusionPipeline

    parts = build_tiny_pipeline(in_channels=4).components
    StableDiffusionPipeline(**{**parts, "safety_checker": None, "feature_extractor": None, "image_encoder": None},
                            requires_safety_checker=False).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="StableDiffusionPipeline pipeline is not an editing model.*reads "
                                         ".*FluxKontextPipeline.*StableDiffusionInstructPix2PixPipeline") as refused:
        EditSegmenter.from_pretrained(str(tmp_path), device="cpu")
    assert "\n" not in str(refused.value)
