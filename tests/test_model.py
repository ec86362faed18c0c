"""Loading: hub id, HF cache, local folder; device and dtype; clear errors when weights are missing."""

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import build_tiny_pipeline

from napari_editseg import EditSegmenter, ModelNotAvailableError
from napari_editseg.core.model import choose_device, choose_dtype


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
    assert choose_dtype("auto", torch.device("cuda")) == torch.float16
    assert choose_dtype("auto", torch.device("cpu")) == torch.float32
    assert choose_dtype("auto", torch.device("mps")) == torch.float32
    assert choose_dtype("bf16", torch.device("cpu")) == torch.bfloat16
    with pytest.raises(ValueError, match="dtype 'half-ish'"):
        choose_dtype("half-ish", torch.device("cpu"))
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
