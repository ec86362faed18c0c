"""docs/reliability.md's catalogue: at least 110 cases, and every case names a test that exists.

A case's test cell names tests as `file.py::test_name` (parameters in brackets allowed; `::other`
continues the file named before it), "same" (the row above's tests), "CLI table" (the CLI's
table of bad inputs), row numbers of other cases, or a tool under tools/."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEADER = "| # | case | what the user gets | test |"
CLI_TABLE = ("test_cli.py", "test_bad_input_gives_one_line_and_a_non_zero_exit")


def catalogue() -> dict[int, str]:
    """Case number -> its test cell, from every table with the catalogue's header."""
    cases, inside = {}, False
    for line in (ROOT / "docs" / "reliability.md").read_text().splitlines():
        if line.strip() == HEADER:
            inside = True
            continue
        if inside and not line.startswith("|"):
            inside = False
        found = re.match(r"\| (\d+) \|.*\| ([^|]+) \|$", line) if inside else None
        if found:
            number = int(found.group(1))
            assert number not in cases, f"case {number} appears twice"
            cases[number] = found.group(2).strip()
    return cases


def named_in(cell: str) -> list[tuple[str, str]]:
    named, file = [], None
    for file_part, name in re.findall(r"`(?:tests/)?([\w/]*\.py)?::(\w+)", cell):
        file = file_part or file
        named.append((file, name))
    return named


def defined(file: str, name: str) -> bool:
    path = ROOT / "tests" / file
    return path.is_file() and re.search(rf"^def {name}\(", path.read_text(), re.M) is not None


def test_the_catalogue_holds_at_least_110_cases_each_with_a_test_that_exists():
    cases = catalogue()
    assert len(cases) >= 110, len(cases)
    assert sorted(cases) == list(range(1, max(cases) + 1)), "case numbers have gaps"
    previous: list = []
    for number in sorted(cases):
        cell = cases[number]
        named = named_in(cell)
        if cell.startswith("same"):
            named = named or previous
        if "CLI table" in cell:
            named.append(CLI_TABLE)
        tools = [t for t in re.findall(r"`((?:tools|benchmarks)/[\w.]+)`", cell) if (ROOT / t).is_file()]
        others = [int(n) for n in re.findall(r"\b(\d+)\b", re.sub(r"`[^`]*`", "", cell)) if int(n) in cases]
        assert named or tools or others, f"case {number} names no test: {cell!r}"
        for file, name in named:
            assert defined(file, name), f"case {number}: {file}::{name} does not exist"
        previous = named or previous
