"""Text from files, uploads and the run registry, made safe for Streamlit markdown (one rule for
every page)."""

from __future__ import annotations

import re

from pitune_core.common import printable

#: characters that can start markup inline (an underscore only where it could open or close
#: emphasis); every colon (a colour directive, an emoji shortcode, or the ``://`` of a web address
#: that GFM would turn into a link), ``@`` (an e-mail address) and the dot of ``www.`` (a bare
#: web address) are escaped too
_MD_SPECIAL = re.compile(r"[\\`*\[\]<>!$~|&#:@]|(?<![A-Za-z0-9])_|_(?![A-Za-z0-9])|(?<=www)\.", re.IGNORECASE)


def md(value) -> str:
    """A file- or user-supplied value as literal markdown text (one line, control characters dropped,
    every character that could start markup escaped): no link, image, HTML, heading, colour
    directive or emoji shortcode can come out of it. Where a backslash would show (plain-text
    widgets), show the value with ``st.text`` instead."""
    return _MD_SPECIAL.sub(lambda m: "\\" + m.group(0), printable(value))
