"""Reading server-rendered pages in tests and benchmarks."""

from __future__ import annotations

import re
from html import unescape


def button_url(html: str, label: str) -> str | None:
    """The ``hx-get`` URL of the button labelled ``label``, if the page has one."""
    found = re.search(r'hx-get="([^"]+)"[^>]*>' + re.escape(label) + "<", html)
    return unescape(found.group(1)) if found else None
