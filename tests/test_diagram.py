"""asit.diagram draws every part of ASiT: two views, corruption, student, EMA teacher, three losses."""

import matplotlib

matplotlib.use("Agg")

from matplotlib.patches import FancyArrowPatch, FancyBboxPatch  # noqa: E402

from asit.diagram import ARROWS, BOXES, draw_asit  # noqa: E402


def test_the_diagram_shows_views_corruption_networks_and_the_three_losses(tmp_path):
    fig = draw_asit()
    ax = fig.axes[0]
    texts = " ".join(t.get_text() for t in ax.texts)
    for words in ("view 1", "view 2", "group masking", "student", "teacher (EMA)", "EMA", "stop-grad",
                  "global loss", "local loss", "reconstruction loss"):
        assert words in texts, words
    assert sum(isinstance(p, FancyBboxPatch) for p in ax.patches) == len(BOXES)
    assert sum(isinstance(p, FancyArrowPatch) for p in ax.patches) == len(ARROWS)
    assert all(start in BOXES and end in BOXES for start, end, _, _ in ARROWS)
    ends = {(start, end) for start, end, _, _ in ARROWS}
    assert {("teacher", "global"), ("student", "global"), ("teacher", "local"), ("student", "local"), ("student", "recon")} <= ends
    fig.savefig(tmp_path / "asit.png")
    assert (tmp_path / "asit.png").stat().st_size > 10_000
