"""Config tables for the notebooks: the fields where two configs differ, each with what it means.

A value such as ``depth 0``, ``max_clips 0`` or ``max_steps_per_epoch None`` says nothing on its
own ("0 = the size's standard 12", "0 = every clip", "None: the whole split"). The meaning is
already written once, as the comment beside the field in its dataclass; this module reads those
comments so that a table can show them next to the values, and shows ``None`` as ``None``
(pandas would print NaN). In a notebook the table shows every note whole, wrapped and left-aligned
(pandas cuts text at 50 characters, which cut most notes before the part that explains the value).
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import io
import textwrap
import tokenize
from typing import Any, Iterable

import pandas as pd


def field_notes(cls: type) -> dict[str, str]:
    """``{field: comment}`` from the source of dataclass ``cls``: the comment on a field's lines,
    plus the comment lines right below them (section rules ``# ---`` end a field's note)."""
    source = textwrap.dedent(inspect.getsource(cls))
    field_at = {
        row: node.target.id
        for node in ast.parse(source).body[0].body
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
        for row in range(node.lineno, node.end_lineno + 1)
    }
    layout = (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT)
    notes: dict[str, list[str]] = {}
    current = None  # the field a comment line below it continues
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        row, text = token.start[0], token.string.lstrip("#").strip()
        if row in field_at:
            current = field_at[row]
            if token.type == tokenize.COMMENT:
                notes.setdefault(current, []).append(text)
        elif token.type == tokenize.COMMENT:
            if token.string.startswith("# -"):
                current = None
            elif current is not None:
                notes.setdefault(current, []).append(text)
        elif token.type not in layout:
            current = None
    return {name: " ".join(parts) for name, parts in notes.items()}


class ConfigTable(pd.DataFrame):
    """A DataFrame whose notebook display keeps long text whole: wrapped, left-aligned, escaped."""

    @property
    def _constructor(self):
        return ConfigTable

    def _repr_html_(self) -> str:
        cells = {"text-align": "left", "white-space": "normal", "max-width": "40em"}
        headings = [{"selector": "th.col_heading", "props": "text-align: left;"}]  # above their text
        return self.style.format(escape="html").set_properties(**cells).set_table_styles(headings).to_html()


def _shown(value: Any) -> str:
    return "None" if value is None else str(value)


def differences(config: Any, reference: Any, labels: tuple[str, str], fields: Iterable[str] | None = None,
                skip: Iterable[str] = ()):
    """A DataFrame of the fields where ``config`` and ``reference`` (same dataclass) differ: one
    column per config (``labels``) and ``meaning``, the field's comment in its dataclass."""
    notes = field_notes(type(config))
    names = list(fields) if fields is not None else [f.name for f in dataclasses.fields(config)]
    rows = {
        name: {labels[0]: _shown(getattr(config, name)), labels[1]: _shown(getattr(reference, name)),
               "meaning": notes.get(name, "")}
        for name in names if name not in set(skip) and getattr(config, name) != getattr(reference, name)
    }
    return ConfigTable.from_dict(rows, orient="index", columns=[*labels, "meaning"])
