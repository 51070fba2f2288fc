"""Config tables say what a value means: each field's own comment beside the values that differ."""

from __future__ import annotations

from dataclasses import dataclass

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
