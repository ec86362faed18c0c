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


def publish(figures: dict, json_path, doc_path, write_doc) -> None:
    """Print the figures, save them as JSON (when a path is given) and rewrite the doc's section."""
    import json

    print(json.dumps(figures, indent=1))
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(figures, indent=1))
    if doc_path:
        write_doc(Path(doc_path), figures)
