"""MkDocs hook: the code's docstrings cross-reference with Sphinx roles (:class:`X`, :func:`X`, ...).

mkdocstrings renders docstrings as Markdown, so a role would show as the literal
text ``:class:`` before the code span. This hook turns each role + code span of a
rendered page into a cross-reference that mkdocs-autorefs resolves into a link
where ``X`` is documented (``~a.b.C`` shows as ``C``), and into plain code where
it is not (an unqualified or undocumented name).
"""

from __future__ import annotations

import html
import re

ROLE = re.compile(r":(?:class|func|meth|mod|data|attr|exc|obj|const):<code>(~?)([A-Za-z_][\w.]*)(\(\))?</code>")


def _autoref(match: re.Match[str]) -> str:
    short, name, call = match.groups()
    shown = name.rsplit(".", 1)[-1] if short else name
    label = f"<code>{html.escape(shown)}{call or ''}</code>"
    if "." not in name:  # unqualified: the reader knows which module, autorefs does not
        return label
    return f'<autoref identifier="{html.escape(name)}" optional>{label}</autoref>'


def on_page_content(html_text: str, **_: object) -> str:
    return ROLE.sub(_autoref, html_text)
