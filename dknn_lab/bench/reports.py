"""Where benchmark results go: one JSON file for machines and one Markdown file for people."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def save_report(result: dict[str, Any], text: str, out_dir: Path, stem: str) -> None:
    """Writes OUT/STEM.json and OUT/STEM.md and prints the Markdown. Names are joined, not made with
    Path.with_suffix: a stem such as "…-T0.1-relu1" contains a dot that is not a suffix."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, markdown_path = out_dir / f"{stem}.json", out_dir / f"{stem}.md"
    json_path.write_text(json.dumps(result, indent=2) + "\n")
    markdown_path.write_text(text)
    print(text)
    print(f"saved {json_path} and {markdown_path}")
