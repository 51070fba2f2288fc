"""ASiT's architecture in one matplotlib figure: two views, corruption, student and teacher, three losses.

    from asit.diagram import draw_asit
    fig = draw_asit()          # shown in notebooks 03 and 04

The drawing follows the method as this package implements it (see ``asit.pretrain``):

- one clip gives **two views** (random crops of its spectrogram);
- each view is **corrupted** by group masking (GMML, :mod:`asit.masking`) for the **student**;
  the **teacher** sees the clean views;
- both are the same ViT with a projection head; the teacher is an exponential moving average
  (EMA) of the student and gets no gradient (stop-gradient);
- three losses: **global** distillation (class tokens, across the views), **local**
  distillation (patch tokens at the masked positions, same view) and **reconstruction**
  (the student's reconstruction head rebuilds the masked spectrogram patches, L1).
"""

from __future__ import annotations

import matplotlib.pyplot as plt
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch

__all__ = ["draw_asit", "BOXES"]

# name -> (x, y, width, height, label, colour); the canvas is 16 x 9 units
BOXES = {
    "clip": (0.2, 3.9, 1.8, 1.2, "clip\n(log-mel)", "#dddddd"),
    "view1": (2.6, 6.0, 1.8, 1.1, "view 1", "#e8e8e8"),
    "view2": (2.6, 1.9, 1.8, 1.1, "view 2", "#e8e8e8"),
    "mask1": (5.0, 6.0, 2.0, 1.1, "group masking\n(corrupted)", "#f6d6c8"),
    "mask2": (5.0, 1.9, 2.0, 1.1, "group masking\n(corrupted)", "#f6d6c8"),
    "student": (7.7, 3.7, 2.5, 1.6, "student\nViT + heads", "#c6dbef"),
    "teacher": (7.7, 7.2, 2.5, 1.4, "teacher (EMA)\nViT + head", "#c7e9c0"),
    "global": (11.6, 6.9, 3.9, 1.0, "global loss: class tokens,\nacross the two views", "#fdd0a2"),
    "local": (11.6, 4.9, 3.9, 1.0, "local loss: masked patch\ntokens, same view", "#fdd0a2"),
    "recon": (11.6, 2.9, 3.9, 1.0, "reconstruction loss:\nL1 on masked patches", "#fdd0a2"),
}

# (from, to, label, style): solid = data, dashed = clean views to the teacher, dotted = EMA
ARROWS = [
    ("clip", "view1", "", "-"),
    ("clip", "view2", "", "-"),
    ("view1", "mask1", "", "-"),
    ("view2", "mask2", "", "-"),
    ("mask1", "student", "", "-"),
    ("mask2", "student", "", "-"),
    ("view1", "teacher", "clean views", "--"),
    ("view2", "teacher", "", "--"),
    ("student", "teacher", "EMA", ":"),
    ("teacher", "global", "stop-grad", "-"),
    ("teacher", "local", "", "-"),
    ("student", "global", "", "-"),
    ("student", "local", "", "-"),
    ("student", "recon", "", "-"),
    ("view2", "recon", "", "-"),
]


def _anchor(box, toward):
    """The point on ``box``'s edge facing the centre of ``toward`` (left/right, else top/bottom)."""
    x, y, w, h = box[:4]
    tx, ty, tw, th = toward[:4]
    cx, cy, tcx, tcy = x + w / 2, y + h / 2, tx + tw / 2, ty + th / 2
    if abs(tcx - cx) * h >= abs(tcy - cy) * w:  # mostly sideways
        return (x + w if tcx > cx else x), cy
    return cx, (y + h if tcy > cy else y)


def draw_asit(ax: plt.Axes | None = None) -> plt.Figure:
    """Draw the diagram on ``ax`` (a new 12 x 6.75 inch figure if ``None``) and return its figure."""
    if ax is None:
        _, ax = plt.subplots(figsize=(12, 6.75))
    for x, y, w, h, label, colour in BOXES.values():
        ax.add_patch(FancyBboxPatch((x, y), w, h, boxstyle="round,pad=0.05", facecolor=colour, edgecolor="#333333"))
        ax.text(x + w / 2, y + h / 2, label, ha="center", va="center", fontsize=10)
    for start, end, label, style in ARROWS:
        a, b = _anchor(BOXES[start], BOXES[end]), _anchor(BOXES[end], BOXES[start])
        if end == "recon" and start != "student":  # the reconstruction's target, the clean view, drawn below
            a, b = (BOXES[start][0] + 0.9, BOXES[start][1]), (BOXES["recon"][0] + 1.95, BOXES["recon"][1])
            ax.add_patch(FancyArrowPatch(a, b, connectionstyle="arc3,rad=0.2", arrowstyle="-|>", mutation_scale=12, linestyle="--", color="#555555"))
            ax.text(8.6, 1.0, "target: the clean view's patches", ha="center", fontsize=9, color="#555555")
            continue
        ax.add_patch(FancyArrowPatch(a, b, arrowstyle="-|>", mutation_scale=12, linestyle=style, color="#333333"))
        if label:
            ax.text((a[0] + b[0]) / 2, (a[1] + b[1]) / 2 + 0.15, label, ha="center", fontsize=9, style="italic")
    ax.set_xlim(0, 16)
    ax.set_ylim(0, 9)
    ax.set_axis_off()
    ax.set_title("ASiT: group-masked student, EMA teacher, three losses", fontsize=12)
    return ax.figure
