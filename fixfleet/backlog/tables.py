"""Rows as a pandas DataFrame when pandas is installed (notebooks install it), else as they are."""

from __future__ import annotations

from typing import Any


def as_table(rows: list[dict[str, Any]]) -> Any:
    try:
        import pandas
    except ImportError:  # optional: the CLI and scripts get the list of rows
        return rows
    return pandas.DataFrame(rows)
