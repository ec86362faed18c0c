"""What `pip install napari-editseg` and napari hub get: license, metadata, extras, README."""

import re
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads(ROOT.joinpath("pyproject.toml").read_text())["project"]


def names(requirements):
    return {Requirement(r).name.lower() for r in requirements}


def test_the_license_ships_and_is_declared_the_current_way():
    assert "BSD 3-Clause" in ROOT.joinpath("LICENSE").read_text()
    assert PROJECT["license"] == "BSD-3-Clause" and PROJECT["license-files"] == ["LICENSE"]
    assert not any(c.startswith("License ::") for c in PROJECT["classifiers"])  # superseded by the expression


def test_metadata_for_napari_hub():
    classifiers = set(PROJECT["classifiers"])
    assert {"Framework :: napari", "Operating System :: OS Independent"} <= classifiers
    assert any(c.startswith("Development Status ::") for c in classifiers)
    assert any(c.startswith("Programming Language :: Python :: 3.1") for c in classifiers)
    assert PROJECT["authors"] and {"Homepage", "Documentation", "Source Code", "Bug Tracker"} <= set(PROJECT["urls"])


def test_the_plugin_pulls_only_what_it_needs():
    needed = names(PROJECT["dependencies"])
    assert not needed & {"pycocotools", "pyarrow", "pandas", "npe2", "pytest"}
    extras = PROJECT["optional-dependencies"]
    assert names(extras["eval"]) == {"pycocotools", "pyarrow"}
    assert names(extras["eval"]) <= names(extras["testing"])  # the tests run the evaluation code too


def test_a_missing_eval_extra_is_one_clear_line(monkeypatch):
    from napari_editseg.eval.refer import annotation_mask

    monkeypatch.setitem(sys.modules, "pycocotools", None)  # as if not installed
    monkeypatch.setitem(sys.modules, "pycocotools.mask", None)
    with pytest.raises(ValueError, match=r"needs pycocotools.*napari-editseg\[eval\]") as caught:
        annotation_mask([[0, 0, 4, 0, 4, 4]], 5, 5)
    assert "\n" not in str(caught.value)


def test_readme_links_work_off_github_and_it_shows_the_widget():
    if not ROOT.joinpath("README.md").is_file():
        pytest.skip("no README here")
    readme = ROOT.joinpath("README.md").read_text()
    targets = re.findall(r"\]\(([^)]+)\)", readme)
    assert targets and all(t.startswith("https://") for t in targets), [t for t in targets if "://" not in t]
    images = re.findall(r"!\[[^\]]*\]\((https://[^)]+\.png)\)", readme)
    assert images
    for image in images:  # each picture the README shows is in the repository
        relative = image.split("/main/", 1)[1]
        if ROOT.joinpath(".git").exists():
            assert ROOT.joinpath(relative).is_file(), relative
