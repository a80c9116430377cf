"""The search page at `GET /`: one static HTML file (`maple/serving/static/search.html`, shipped as package data)
with its style and script inline, over the public API (`GET /health`, `POST /v1/search` with `return_documents`).
No build step and nothing fetched from elsewhere, so it works offline.

The page itself is served without a key (a browser cannot put a bearer token on a navigation); the requests it
makes carry `Authorization: Bearer <key>`, the key typed into the page and kept in the tab's sessionStorage.
"""

from __future__ import annotations

import base64
import hashlib
import re
from functools import cache
from importlib import resources

PAGE = "static/search.html"


def _hashes(html: str, tag: str) -> str:
    """CSP source expressions for every inline `<tag>` block: 'sha256-<base64 of the block's UTF-8 bytes>'."""
    blocks = re.findall(rf"<{tag}>(.*?)</{tag}>", html, re.DOTALL)
    return " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(b.encode('utf-8')).digest()).decode('ascii')}'"
                    for b in blocks)


@cache
def search_page() -> tuple[str, dict[str, str]]:
    """(the page's HTML, its response headers). The Content-Security-Policy admits only the page's own inline script
    and style (by their SHA-256), requests to this origin and `data:` images: nothing a hit carries (a caption, a
    payload) can run as script, and the page loads nothing from another origin."""
    html = resources.files(__package__).joinpath(PAGE).read_text(encoding="utf-8")
    policy = "; ".join(["default-src 'none'", f"script-src {_hashes(html, 'script')}",
                        f"style-src {_hashes(html, 'style')}", "img-src data:", "connect-src 'self'",
                        "base-uri 'none'", "form-action 'none'", "frame-ancestors 'none'"])
    return html, {"Content-Security-Policy": policy, "X-Content-Type-Options": "nosniff",
                  "Referrer-Policy": "no-referrer", "Cache-Control": "no-cache"}
