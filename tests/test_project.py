"""Promises the repository makes to a new user and to CI."""

import re
from pathlib import Path

import pytest
from packaging.requirements import Requirement

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parents[1]


def setup_commands():
    section = ROOT.joinpath("README.md").read_text().split("## Set up on a fresh machine")[1].split("\n## ")[0]
    return re.findall(r"```bash\n(.*?)\n```", section, flags=re.S)


def test_readme_has_exactly_two_setup_commands_and_ci_runs_the_test_one():
    if not ROOT.joinpath(".ci", "run").is_file():
        pytest.skip("outside a clone: an sdist carries no .ci/ and no tools/")
    install_and_run, install_and_test = setup_commands()
    assert "napari-editseg segment" in install_and_run and "\n" not in install_and_run
    assert "tools/run-tests" in install_and_test and "\n" not in install_and_test
    ci = ROOT.joinpath(".ci/run").read_text().splitlines()
    assert install_and_test in ci


def test_the_torch_requirement_is_met_by_the_cpu_build_on_disk():
    project = tomllib.loads(ROOT.joinpath("pyproject.toml").read_text())["project"]
    torch = [Requirement(r) for r in project["dependencies"] if Requirement(r).name == "torch"]
    assert torch and torch[0].specifier.contains("2.13.0")
