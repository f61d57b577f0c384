"""Markdown tables for the reports the data steps write (cohort, split).

A module of its own so that a step whose report uses it depends on this formatting only, not on another step's code
(leanmed.fingerprint follows imports).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd


def markdown_table(frame: pd.DataFrame, float_format: str = "{:.3f}") -> str:
    """Render `frame` as a GitHub Markdown table (header, separator, one line per row; no index).

    Floats are formatted with `float_format`, missing values are left empty and `|` inside cells is escaped so
    that free-text cells cannot break the table.
    """

    def cell(value: object) -> str:
        if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
            return ""
        if isinstance(value, (float, np.floating)):
            return float_format.format(value)
        return str(value).replace("|", "\\|").replace("\n", " ")

    header = "| " + " | ".join(str(column) for column in frame.columns) + " |"
    separator = "|" + "|".join("---" for _ in frame.columns) + "|"
    rows = ["| " + " | ".join(cell(value) for value in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, separator, *rows]) + "\n"
