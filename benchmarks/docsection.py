"""Benchmarks rewrite only their own measured section of a doc, between two markers."""

from __future__ import annotations

from pathlib import Path


def replace_section(doc: Path, name: str, section: str) -> None:
    """Put ``section`` (which starts and ends with the markers of ``name``) into ``doc``."""
    start, end = f"<!-- measured:{name}:start -->", f"<!-- measured:{name}:end -->"
    assert section.startswith(start) and section.endswith(end)
    text = doc.read_text() if doc.exists() else ""
    if start in text and end in text:
        text = text[:text.index(start)] + section + text[text.index(end) + len(end):]
    else:
        text += "\n" + section + "\n"
    doc.write_text(text)
