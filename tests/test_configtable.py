"""Config tables say what a value means: each field's own comment beside the values that differ."""

from __future__ import annotations

from dataclasses import dataclass
from html import escape as html_escape

from asit.config import PretrainConfig
from asit.configtable import differences, field_notes


@dataclass
class Example:
    # ---------------- a section rule, not a note
    depth: int = 0  # blocks; 0 = the standard 12
    max_steps: int | None = None  # cap on steps; None: the whole split
    # (the smoke preset sets it)
    # ---------------- another section
    name: str = "x"


def test_notes_are_the_fields_comments_with_their_continuation_lines():
    assert field_notes(Example) == {
        "depth": "blocks; 0 = the standard 12",
        "max_steps": "cap on steps; None: the whole split (the smoke preset sets it)",
    }
    assert "0 = every clip" in field_notes(PretrainConfig)["max_clips"]


def test_the_table_holds_only_differences_and_shows_none_as_none():
    table = differences(Example(depth=4), Example(max_steps=2, name="y"), ("ours", "paper"), skip=("name",))
    assert list(table.index) == ["depth", "max_steps"]
    assert table.loc["max_steps"].tolist() == ["None", "2", "cap on steps; None: the whole split (the smoke preset sets it)"]
    assert table.loc["depth", "meaning"] == "blocks; 0 = the standard 12"


def test_the_notebook_display_keeps_each_note_whole_and_escaped():
    long_note = field_notes(PretrainConfig)["max_clips"]
    assert len(long_note) > 50  # what pandas' own display would cut
    table = differences(PretrainConfig(max_clips=8), PretrainConfig(), ("ours", "default"))
    html = table._repr_html_()
    assert html.count("<tr") == len(table) + 1 and html_escape(long_note) in html
    assert len(table.loc[["max_clips"]]) == 1  # still a DataFrame to select from
