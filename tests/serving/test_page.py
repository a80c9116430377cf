"""The search page's file and headers (maple.serving.page), without a server: it loads nothing from elsewhere, and
its Content-Security-Policy admits exactly its own inline script and style. tests/serve/test_search_page.py drives
it in a browser."""

from __future__ import annotations

import base64
import hashlib
import re
from html.parser import HTMLParser

from maple.serving.page import search_page


class Blocks(HTMLParser):
    """Inline <script> and <style> texts, and every src / href attribute."""

    def __init__(self):
        super().__init__(convert_charrefs=False)
        self.inline: dict[str, list[str]] = {"script": [], "style": []}
        self.links: list[str] = []
        self._open: str | None = None

    def handle_starttag(self, tag, attrs):
        self.links += [value for name, value in attrs if name in ("src", "href")]
        self._open = tag if tag in self.inline else None
        if self._open:
            self.inline[tag].append("")

    def handle_endtag(self, tag):
        self._open = None

    def handle_data(self, data):
        if self._open:
            self.inline[self._open][-1] += data


def parsed() -> tuple[dict[str, str], Blocks]:
    html, headers = search_page()
    blocks = Blocks()
    blocks.feed(html)
    return headers, blocks


def test_the_page_loads_nothing_from_elsewhere():
    headers, blocks = parsed()
    assert blocks.links == ["data:,"]  # the empty favicon: no request for /favicon.ico either
    assert not re.search(r"https?://|//[a-z]", "".join(blocks.inline["script"]))  # fetch() paths are relative
    assert "default-src 'none'" in headers["Content-Security-Policy"]


def test_the_policy_admits_exactly_the_pages_inline_script_and_style():
    headers, blocks = parsed()
    policy = dict(part.strip().split(" ", 1) for part in headers["Content-Security-Policy"].split(";"))
    for tag in ("script", "style"):
        (block,) = blocks.inline[tag]
        digest = base64.b64encode(hashlib.sha256(block.encode("utf-8")).digest()).decode()
        assert policy[f"{tag}-src"] == f"'sha256-{digest}'"
    assert (policy["connect-src"], policy["img-src"]) == ("'self'", "data:")
