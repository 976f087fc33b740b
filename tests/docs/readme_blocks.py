"""The README's fenced code blocks and the markers that say how the README test treats each one.

A marker is an HTML comment on the line just before a fence (GitHub renders nothing for it):

- ``<!-- readme-test: run -->``: run the block (``sh``: with bash, ``set -euo pipefail``; ``python``: with the
  test's interpreter), in order, in the test's working directory; it must exit 0 and print no error body.
- ``<!-- readme-test: background -->``: start the block (a server) and leave it running for the blocks after it;
  the test waits until the URL ``/readyz`` of the port the block names answers 200, and stops it at the end.
- ``<!-- readme-test: skip REASON -->``: not runnable in the test (the reason is required, e.g. Docker).

Every ``sh``/``bash``/``python`` block must carry a marker: a command a newcomer is told to type is either covered
or says why not. Blocks in other languages (``json``, plain text) are not commands and need none.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Mode = Literal["run", "background", "skip"]
COMMAND_LANGUAGES = frozenset({"sh", "bash", "shell", "python"})
_MARKER = re.compile(r"^<!--\s*readme-test:\s*(run|background|skip)\b\s*(.*?)\s*-->\s*$")
_FENCE = re.compile(r"^```(\w*)\s*$")


@dataclass(frozen=True)
class Block:
    """One fenced block: its language, its text, the line its fence opens on, and its marker (if any)."""

    language: str
    text: str
    line: int
    mode: Mode | None
    reason: str

    @property
    def is_command(self) -> bool:
        return self.language in COMMAND_LANGUAGES


def read_blocks(path: Path) -> list[Block]:
    """Every fenced block of a Markdown file, in order, with the marker on the line before it."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    index = 0
    while index < len(lines):
        fence = _FENCE.match(lines[index])
        if fence is None:
            index += 1
            continue
        start = index
        end = start + 1
        while end < len(lines) and not lines[end].startswith("```"):
            end += 1
        if end == len(lines):
            raise ValueError(f"{path}:{start + 1}: a fenced block is never closed")
        marker = _MARKER.match(lines[start - 1].strip()) if start > 0 else None
        mode: Mode | None = marker.group(1) if marker else None  # type: ignore[assignment]
        blocks.append(
            Block(
                language=fence.group(1),
                text="\n".join(lines[start + 1 : end]) + "\n",
                line=start + 1,
                mode=mode,
                reason=marker.group(2) if marker else "",
            )
        )
        index = end + 1
    return blocks
