"""Fixtures over the tiny random-weight models of :mod:`napari_editseg.testing`, saved with
``save_pretrained`` once per session and loaded through the same path users take.

Nothing here is mocked: every test that runs a segmentation runs a real denoiser forward.
Tests run torch on one thread: the tiny models' operations are too small to gain from a second
one, and on a busy 2-core machine it cost 2.6× per segmentation of the shapes-world model
(measured: 0.07 s against 0.19 s); subprocesses inherit the setting.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch the hub
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

from napari_editseg.testing import (  # noqa: E402
    TWO_LEVELS,
    CallCounter,
    RowCounter,
    build_tiny_flux_kontext,
    build_tiny_pipeline,
    save_tiny_sdxl,
    tiny_picture,
)

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


GUI_FIXTURES = {"make_napari_viewer", "make_napari_viewer_proxy", "qtbot"}


def pytest_collection_modifyitems(items):
    """``gui`` on every test that opens napari's viewer or drives Qt, whoever writes it."""
    for item in items:
        if GUI_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.gui)


def saved(tmp_path_factory, name: str, pipeline):
    """``pipeline`` saved with ``save_pretrained`` into a fresh session folder."""
    folder = tmp_path_factory.mktemp(name)
    pipeline.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A saved four-level tiny InstructPix2Pix folder (diffusers layout)."""
    return saved(tmp_path_factory, "tiny-ip2p", build_tiny_pipeline())


@pytest.fixture(scope="session")
def tiny_two_level_dir(tmp_path_factory):
    return saved(tmp_path_factory, "tiny-ip2p-2level", build_tiny_pipeline(TWO_LEVELS))


@pytest.fixture(scope="session")
def tiny_sdxl_dir(tmp_path_factory):
    """A saved tiny SDXL InstructPix2Pix folder (diffusers layout, Euler schedule)."""
    return save_tiny_sdxl(tmp_path_factory.mktemp("tiny-sdxl-ip2p"))


@pytest.fixture(scope="session")
def tiny_cosxl_dir(tmp_path_factory):
    """A saved tiny CosXL Edit folder (EDM v-prediction schedule, is_cosxl_edit)."""
    return save_tiny_sdxl(tmp_path_factory.mktemp("tiny-cosxl-edit"), cosxl=True, seed=1)


@pytest.fixture(scope="session")
def tiny_flux_dir(tmp_path_factory):
    """A saved tiny FLUX.1 Kontext folder (diffusers layout)."""
    return saved(tmp_path_factory, "tiny-flux-kontext", build_tiny_flux_kontext())


@pytest.fixture(scope="session")
def segmenter(tiny_model_dir):
    from napari_editseg import EditSegmenter

    return EditSegmenter.from_pretrained(str(tiny_model_dir), device="cpu")


@pytest.fixture()
def picture():
    """A 45×60 RGB uint8 picture: a bright disc and a dark square on a textured background."""
    return tiny_picture()


@pytest.fixture()
def count_calls():
    return CallCounter


@pytest.fixture()
def count_rows():
    return RowCounter
