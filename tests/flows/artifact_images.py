"""Reading back the images the flows publish as markdown artifacts."""

from __future__ import annotations

import base64
import re

_IMAGE_ALONE = re.compile(r"!\[[^\]\n]*\]\(data:image/png;base64,([A-Za-z0-9+/=]+)\)")


def embedded_png(markdown: str) -> bytes:
    """The PNG of a markdown artifact that holds one embedded image and nothing else (no URI as text)."""
    match = _IMAGE_ALONE.fullmatch(markdown.strip())
    assert match, f"not a lone embedded PNG: {markdown[:200]!r}"
    return base64.b64decode(match.group(1))
