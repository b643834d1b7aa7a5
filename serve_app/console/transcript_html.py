"""A transcript's messages as HTML list items, written in Python rather than a template.

A transcript page holds up to 2,000 messages; drawn by a Jinja include, their list cost about
four times as much CPU as these few lines (17 ms against 4 ms on this machine), most of a page's
time. Every value that comes from a session is escaped here (markupsafe's `escape`); the rest
(kinds, numbers, the task's key) is the platform's own.
"""

from __future__ import annotations

from markupsafe import Markup, escape

from serve_app.console.render import when
from serve_app.console.transcripts import Block, SessionMessage

FOLDED = {"tool_use": "Tool call", "tool_result": "Tool result", "thinking": "Thinking", "data": "Data"}


def message_list(messages: list[SessionMessage], task_key: str, session_id: str, *, cut: int, inline: int) -> Markup:
    """`<li>` per message: text shown (cut at `cut` characters, the rest a link away), everything
    else folded; a folded block longer than `inline` is fetched when it is opened."""
    base = f"/ui/tasks/{escape(task_key)}/sessions/{escape(session_id)}/blocks/"
    out: list[str] = []
    for message in messages:
        summary = f' <span class="msg-summary">{escape(message.summary)}</span>' if message.summary else ""
        at = f' <span class="muted">{escape(when(message.at))}</span>' if message.at else ""
        out.append(f'<li class="msg msg-{escape(message.kind)}" id="m{int(message.seq)}">\n'
                   f'  <div class="msg-head"><span class="msg-kind">{escape(message.kind)}</span>{summary}{at}</div>\n')
        for index, block in enumerate(message.blocks):
            whole = f"{base}{int(message.seq)}/{index}"
            out.append(_text(block, whole, cut) if block.kind == "text" else _folded(block, whole, inline))
            if block.omitted:
                out.append(f'  <p class="muted">… {int(block.omitted)} more bytes were not recorded (the recording limit).</p>\n')
        out.append("</li>\n")
    return Markup("".join(out))


def _text(block: Block, whole: str, cut: int) -> str:
    html = f'  <div class="block-text">{escape(block.text[:cut])}</div>\n'
    if len(block.text) > cut:
        html += (f'  <p class="muted">… cut here: {len(block.text) - cut} more characters '
                 f'(<a href="{whole}">read it whole</a>).</p>\n')
    return html


def _folded(block: Block, whole: str, inline: int) -> str:
    small = len(block.text) <= inline
    label = FOLDED.get(block.kind, "Data")
    if block.kind == "tool_use":
        label += f": <code>{escape(block.tool or '')}</code>"
    elif block.kind == "tool_result" and block.is_error:
        label += " (error)"
    if not small:
        label += f' <span class="muted">({len(block.text)} characters)</span>'
    fetch = "" if small else f' hx-get="{whole}" hx-trigger="toggle once" hx-target="find .block-body"'
    body = escape(block.text) if small else f'<a href="{whole}">Show it</a>'
    error = " block-error" if block.is_error else ""
    return (f'  <details class="block block-{escape(block.kind)}{error}"{fetch}>\n'
            f'    <summary>{label}</summary>\n    <pre class="block-body">{body}</pre>\n  </details>\n')
