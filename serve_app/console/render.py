"""Turning data into the console's HTML: Jinja2 with autoescape, Markdown with raw HTML off.

Everything the console shows was written by someone else (an alert, an issue, the agent's plan,
its transcript, its diff): templates escape every value, Markdown is rendered by markdown-it-py
with HTML off and images off, and only http(s) links become links (`rel="noopener noreferrer
nofollow"`, no referrer leaks the console's URLs).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from jinja2 import Environment, PackageLoader
from markdown_it import MarkdownIt
from markupsafe import Markup

LINK_SCHEMES = ("http", "https")
LINK_REL = "noopener noreferrer nofollow"


def safe_href(url: Any) -> str | None:
    """`url` if it is an absolute http(s) URL with a host, else None (javascript:, data:, relative...)."""
    if not isinstance(url, str):
        return None
    text = url.strip()
    try:
        parts = urlsplit(text)
    except ValueError:
        return None
    if parts.scheme.lower() not in LINK_SCHEMES or not parts.netloc or any(c in text for c in "\r\n\t\\"):
        return None
    return text


def _markdown() -> MarkdownIt:
    md = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False})
    md.disable("image")  # an image would make the reader's browser fetch whatever the writer chose
    md.validateLink = lambda url: safe_href(url) is not None  # type: ignore[method-assign]

    def link_open(renderer, tokens, idx, options, env):  # noqa: ANN001 - markdown-it's renderer signature
        tokens[idx].attrSet("rel", LINK_REL)
        return renderer.renderToken(tokens, idx, options, env)

    md.add_render_rule("link_open", link_open)
    return md


MARKDOWN = _markdown()


def markdown(text: Any, below: int = 2) -> Markup:
    """Markdown written by someone else, as HTML that carries no markup of theirs. Its headings
    sit `below` levels under the page's (a PLAN.md's `#` inside the page's section is an h3)."""
    tokens = MARKDOWN.parse(str(text or ""))
    for token in tokens:
        if token.type in ("heading_open", "heading_close"):
            token.tag = f"h{min(6, int(token.tag[1]) + below)}"
    return Markup(MARKDOWN.renderer.render(tokens, MARKDOWN.options, {}))


def age(moment: datetime | float | None, now: datetime | None = None) -> str:
    """`45s`, `12m`, `3h`, `5d` since `moment`."""
    if moment is None:
        return "-"
    now = now or datetime.now(UTC)
    seconds = (now - moment).total_seconds() if isinstance(moment, datetime) else float(moment)
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def when(moment: datetime | None) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if moment else "-"


def epoch_when(seconds: float | None) -> str:
    return when(datetime.fromtimestamp(seconds, UTC)) if seconds else "-"


def money(value: float | None) -> str:
    return "-" if value is None else f"${value:.4f}" if value < 1 else f"${value:,.2f}"


def tokens(value: int | None) -> str:
    if value is None:
        return "-"
    return f"{value / 1_000_000:.1f}M" if value >= 1_000_000 else f"{value / 1000:.1f}k" if value >= 1000 else str(value)


def environment() -> Environment:
    """Autoescaped templates. Undefined stays lenient: the task's context and audit data are dicts
    of any shape (an older row, a failed step), and a missing key is drawn as nothing."""
    env = Environment(loader=PackageLoader("serve_app.console", "templates"), autoescape=True,
                      trim_blocks=True, lstrip_blocks=True, auto_reload=False)
    env.filters.update(markdown=markdown, age=age, when=when, epoch_when=epoch_when, money=money, tokens=tokens, href=safe_href)
    return env
