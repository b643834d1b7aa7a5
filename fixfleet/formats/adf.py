"""Atlassian Document Format (Jira Cloud's rich text) read as plain text: a ticket's description
in a webhook or an API answer, a comment the Jira client looks for its marker in."""

from __future__ import annotations

from typing import Any

from fixfleet.formats.access import as_int, as_list, as_str, dig, obj

# Atlassian Document Format: which nodes end a line, and how list items are marked.
_ADF_BLOCKS = {"paragraph", "heading", "blockquote", "panel", "rule", "mediaSingle", "mediaGroup",
               "table", "tableRow", "expand", "nestedExpand", "decisionList", "taskList"}


def adf_to_text(node: Any) -> str:
    """Jira's description as plain text: wiki-markup strings pass through, ADF (Jira Cloud v3)
    documents are flattened; anything else is empty."""
    if isinstance(node, str):
        return node
    if not isinstance(node, dict):
        return ""
    lines = "".join(_adf_render(node)).split("\n")
    return "\n".join(line.rstrip() for line in lines).strip("\n")


def _adf_children(node: dict[str, Any], prefix: str = "") -> list[str]:
    children = [child for child in as_list(node.get("content")) if isinstance(child, dict)]
    return [piece for child in children for piece in _adf_render(child, prefix)]


def _adf_render(node: dict[str, Any], prefix: str = "") -> list[str]:
    kind = as_str(node.get("type"))  # a list here would make the set lookups below raise
    attrs = obj(node.get("attrs"))
    if kind == "text":
        return [as_str(node.get("text")) or ""]
    if kind == "hardBreak":
        return ["\n" + prefix]
    if kind in ("mention", "emoji", "status", "date"):
        return [as_str(attrs.get("text")) or as_str(attrs.get("shortName")) or as_str(attrs.get("timestamp")) or ""]
    if kind in ("inlineCard", "blockCard", "embedCard"):
        return [as_str(attrs.get("url")) or ""] + (["\n"] if kind != "inlineCard" else [])
    if kind == "codeBlock":
        language = as_str(attrs.get("language")) or ""
        return [f"```{language}\n", *_adf_children(node), "\n```\n\n"]
    if kind in ("bulletList", "orderedList"):
        return _adf_list(node, ordered=kind == "orderedList", prefix=prefix)
    if kind == "tableCell" or kind == "tableHeader":
        return [*_adf_children(node, prefix), " | "]
    if kind in _ADF_BLOCKS:
        return [*_adf_children(node, prefix), "\n\n" if kind in ("paragraph", "heading") and not prefix else "\n"]
    return _adf_children(node, prefix)  # doc, listItem, unknown nodes: their text is what matters


def _adf_list(node: dict[str, Any], *, ordered: bool, prefix: str) -> list[str]:
    pieces: list[str] = []
    start = as_int(dig(node, "attrs", "order")) or 1
    for number, item in enumerate((i for i in as_list(node.get("content")) if isinstance(i, dict)), start):
        marker = f"{number}. " if ordered else "- "
        text = "".join(_adf_children(item, prefix + "  ")).strip("\n")
        pieces.append(f"{prefix}{marker}{text}\n")
    return pieces + (["\n"] if not prefix else [])
