"""Text from files, uploads and the run registry, made safe for Streamlit markdown (one rule for
every page)."""

from __future__ import annotations

import re

#: characters that can start markup inline (an underscore only where it could open or close
#: emphasis, a colon only where it could open a colour directive or an emoji shortcode)
_MD_SPECIAL = re.compile(r"[\\`*\[\]<>!$~|&#]|:(?=[A-Za-z0-9_+-])|(?<![A-Za-z0-9])_|_(?![A-Za-z0-9])")


def md(value) -> str:
    """A file- or user-supplied value as literal markdown text (one line, every character that could
    start markup escaped): no link, image, HTML, heading, colour directive or emoji shortcode can
    come out of it."""
    return _MD_SPECIAL.sub(lambda m: "\\" + m.group(0), " ".join(str(value).split()))
