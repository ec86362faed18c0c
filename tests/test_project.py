"""Promises the repository makes to a new user and to CI."""

import re
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

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


def test_supported_napari_and_hub_ranges_are_declared_and_the_oldest_napari_was_checked():
    """Issue 23: both ranges bounded on each side; the napari extras agree; docs/plugin.md records a
    tools/check-oldest run at the lower bound that tools/check-oldest reads."""
    project = tomllib.loads(ROOT.joinpath("pyproject.toml").read_text())["project"]
    hub = [Requirement(r) for r in project["dependencies"] if Requirement(r).name == "huggingface_hub"]
    extras = project["optional-dependencies"]
    napari = {str(Requirement(r).specifier) for name in ("napari", "testing") for r in extras[name]
              if Requirement(r).name == "napari"}
    for specifier in [h.specifier for h in hub] + [SpecifierSet(s) for s in napari]:
        assert {s.operator for s in specifier} == {">=", "<"}, specifier
    assert len(napari) == 1
    lowest = next(s.version for s in SpecifierSet(napari.pop()) if s.operator == ">=")
    table = ROOT.joinpath("docs", "plugin.md").read_text().split("## Supported versions", 1)[1].split("\n## ", 1)[0]
    assert f"| {lowest} (oldest declared) |" in table and "passed" in table


MAX_CLASS, MAX_FUNCTION = 300, 60


def oversized(path: Path) -> list[str]:
    import ast

    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        limit = MAX_CLASS if isinstance(node, ast.ClassDef) else MAX_FUNCTION if isinstance(
            node, (ast.FunctionDef, ast.AsyncFunctionDef)) else None
        if limit and node.end_lineno - node.lineno + 1 > limit:
            found.append(node.name)
    return found


def test_no_class_over_300_lines_and_no_function_over_60_in_src():
    package = ROOT / "src" / "napari_editseg"
    found = {str(p.relative_to(package)): oversized(p) for p in sorted(package.rglob("*.py"))}
    found = {name: names for name, names in found.items() if names}
    assert found == {}, f"over {MAX_CLASS} lines per class or {MAX_FUNCTION} per function: {found}"


# UNet families say UNet; so do the tiny UNet pipelines' builders
FAMILY_MODULES = {"unet.py", "instruct_pix2pix.py", "sdxl_instruct_pix2pix.py", "testing.py"}


def test_family_agnostic_modules_say_denoiser_not_unet():
    package = ROOT / "src" / "napari_editseg"
    # the timings key renamed in 0.2 is spelled out once, quoted, for its alias (core/stages.py)
    saying = [str(p.relative_to(package)) for p in sorted(package.rglob("*.py")) if p.name not in FAMILY_MODULES
              and re.search("unet", p.read_text().replace('"unet"', ""), flags=re.I)]
    assert saying == []


def test_markers_are_declared_and_strict():
    options = tomllib.loads(ROOT.joinpath("pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    assert "--strict-markers" in options["addopts"]
    assert {m.split(":")[0] for m in options["markers"]} == {"gui", "slow"}


WINDOW_TOOLS = ("napari_delete_crash.py", "screenshot_widget.py")  # tools that open a napari window themselves


def test_tests_that_open_a_napari_window_without_a_viewer_fixture_are_marked_gui():
    """conftest marks ``gui`` by fixture; a test running one of the window tools in a subprocess has none."""
    import ast

    found = []
    for path in sorted((ROOT / "tests").glob("test_*.py")):
        text = path.read_text()
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_") \
                    and any(tool in ast.get_source_segment(text, node) for tool in WINDOW_TOOLS):
                found.append((node.name, [ast.unparse(d) for d in node.decorator_list]))
    assert found, "no test runs a window tool: this check has nothing to look at"
    assert [name for name, decorators in found if "pytest.mark.gui" not in decorators] == []


def test_the_package_imports_nothing_through_records_old_names():
    """record.py keeps replay's and the plane helpers' names (and ``first_result``) for older scripts only:
    the package itself imports each from its home (issue 22, item 5)."""
    import ast

    from napari_editseg import planes, replay

    moved = set(planes.__all__) | set(replay.__all__) | {"first_result"}
    package = ROOT / "src" / "napari_editseg"
    found = [f"{path.relative_to(package)}: {alias.name}" for path in sorted(package.rglob("*.py"))
             for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.ImportFrom)
             and node.module == "record" and node.level == 1 for alias in node.names if alias.name in moved]
    assert found == []
