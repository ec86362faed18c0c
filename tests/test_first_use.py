"""Issue 23, what a newcomer meets first: the README's two commands, ``--help``, the files the command
line writes, the timings a result reports, the demo model in the package, and docs that say what is."""

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = Path(__file__).resolve().parents[1] / "src"


def test_help_does_not_import_torch():
    """``napari-editseg --help`` took 5 s: torch and diffusers were imported before the arguments were read."""
    code = ("import sys; from napari_editseg.cli import build_parser; build_parser().format_help(); "
            "print(sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]", done.stdout


def test_a_result_reports_no_encode_time_when_no_encode_ran(segmenter, picture):
    """``timings['encode_image']`` repeated the first encode's time after ``set_image(latents=...)``."""
    segmenter.set_image(picture)
    first = segmenter.segment("the red disc")
    assert first.timings["encode_image"] > 0
    latents = segmenter.image_latents()
    segmenter.set_image(picture, latents=latents)
    assert segmenter.segment("the red disc").timings["encode_image"] == 0.0


def test_a_png_mask_is_0_255_from_segment_and_from_batch(segmenter, picture, tmp_path, monkeypatch):
    from skimage import io

    from napari_editseg.batch import jobs_from_folder, run_batch

    folder = tmp_path / "in"
    folder.mkdir()
    io.imsave(folder / "a.png", picture, check_contrast=False)
    jobs = jobs_from_folder(folder, "the red disc", tmp_path / "out", "png")
    run_batch(jobs, lambda: segmenter, tmp_path / "out", progress=False)
    written = io.imread(tmp_path / "out" / "a.png")
    segmenter.set_image(picture)
    mask = segmenter.segment("the red disc").mask
    assert set(np.unique(written)) <= {0, 255} and np.array_equal(written == 255, mask)


def test_the_overlay_tint_shows_on_a_red_object():
    """The overlay tinted the red circle red: nothing to see."""
    from napari_editseg.cli import overlay
    from napari_editseg.samples import SHAPES_SCENE
    from napari_editseg.shapes_world import make_sample

    scene = make_sample(SHAPES_SCENE)
    tinted = overlay(scene.image, scene.masks[0]).astype(float)
    change = np.abs(tinted - scene.image)[scene.masks[0]].mean()
    assert change > 60, change  # of 255: plainly visible


def test_the_demo_model_is_package_data():
    """The demo checkpoint sat in benchmarks/, outside what pip installs."""
    tomllib = pytest.importorskip("tomllib")
    from napari_editseg.core.model import demo_model_folder

    folder = demo_model_folder()
    assert (folder / "model_index.json").is_file() and folder.parent == SRC / "napari_editseg"
    files = [p.relative_to(folder.parent).as_posix() for p in folder.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) < 10e6
    patterns = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    from fnmatch import fnmatch

    assert all(any(fnmatch(f, pattern) for pattern in patterns["napari_editseg"]) for f in files)


def test_the_readme_has_two_set_up_commands_the_first_offline_and_ci_runs_the_second():
    readme = ROOT / "README.md"
    if not readme.is_file() or not (ROOT / ".ci" / "run").is_file():
        pytest.skip("needs the repository")
    setup = readme.read_text().split("## Set up on a fresh machine", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"```bash\n(.*?)\n```", setup, re.S)
    assert len(commands) == 2
    assert "--model shapes-world-demo" in commands[0] and "--sample shapes" in commands[0]
    assert commands[1] in (ROOT / ".ci" / "run").read_text()


def test_the_docs_say_what_is():
    """docs/usage.md's --sample list left out ``shapes``; docs/plugin.md called a passing test skipped."""
    from napari_editseg.samples import SAMPLES

    if not (ROOT / "docs").is_dir():
        pytest.skip("needs the repository")
    usage = (ROOT / "docs" / "usage.md").read_text()
    listed = usage.split("`--sample NAME` takes one of", 1)[1].split("\n- ", 1)[0]
    assert [name for name in SAMPLES if f"`{name}`" not in listed] == []
    plugin = (ROOT / "docs" / "plugin.md").read_text()
    assert not re.search(r"skipped\s+until", plugin)
