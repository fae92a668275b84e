"""MkDocs hook (see mkdocs.yml): Sphinx roles in docstrings become links.

conpool's docstrings are reST, written for ``help()`` and Sphinx-style readers
(``:class:`~conpool.Config```). mkdocstrings renders the role name as text in
front of a code span; this hook drops the role and hands the name to autorefs
as an optional cross-reference, so ``Config`` links to its reference entry and
a name outside conpool (``ssl.SSLContext``) stays plain code.
"""

from __future__ import annotations

import html
import re
from typing import Any

_ROLE = re.compile(
    r":(?:py:)?(?:class|func|meth|attr|mod|exc|data|obj|const):<code>(?P<name>[^<]+)</code>"
)


def _link(match: re.Match[str]) -> str:
    name = html.unescape(match["name"]).strip()
    short = name.startswith("~")
    name = name.lstrip("~").removesuffix("()")
    title = name.rsplit(".", 1)[-1] if short else name
    # Tried in turn: the name as written, then as a name inside conpool.
    qualified = name if name.startswith("conpool.") else f"conpool.{name}"
    return (
        f'<autoref identifier="{html.escape(name)}" slug="{html.escape(qualified)}" optional>'
        f"<code>{html.escape(title)}</code></autoref>"
    )


def on_page_content(html_text: str, **kwargs: Any) -> str:
    return _ROLE.sub(_link, html_text)
