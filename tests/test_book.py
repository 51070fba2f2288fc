"""make book: the executed notebooks become a Sphinx + MyST-NB site with the results page, and
(where Chromium is installed, as .ci/run does) every page, image and link of it holds in a browser."""

from __future__ import annotations

import base64
import io
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import nbformat  # noqa: E402
import pytest  # noqa: E402

from asit import book  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
import book_check  # noqa: E402

pytestmark = pytest.mark.slow  # a Sphinx build, about 15 s


def _png() -> str:
    fig, ax = plt.subplots(figsize=(2, 1.5))
    ax.plot([0, 1, 0.5])
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode()


def _executed(title: str, link: str) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    plot = nbformat.v4.new_code_cell("plot()", execution_count=1)
    plot.outputs = [nbformat.v4.new_output("display_data", data={"image/png": _png(), "text/plain": "<Figure>"})]
    table = nbformat.v4.new_code_cell("accuracy", execution_count=2)
    table.outputs = [nbformat.v4.new_output("execute_result", data={"text/plain": "61.5"}, execution_count=2)]
    nb.cells = [nbformat.v4.new_markdown_cell(f"# {title}\n\nSee [the next one]({link}).\n\n## Summary\n\nDone."), plot, table]
    return nb


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    root = tmp_path_factory.mktemp("book")
    notebooks, results = root / "notebooks", root / "results"
    (results / "executed").mkdir(parents=True)
    notebooks.mkdir()
    for stem, title, link in (("01_first", "01 · First", "02_second.ipynb"), ("02_second", "02 · Second", "01_first.ipynb#summary")):
        (notebooks / f"{stem}.ipynb").write_text("{}")  # the course's sources: only their names matter here
        nbformat.write(_executed(title, link), results / "executed" / f"{stem}__smoke.ipynb")
    (results / "README.md").write_text("# Results\n\n| task | ours |\n|---|---|\n| esc50 | 61.5 |\n")
    (results / "summary__smoke.png").write_bytes(base64.b64decode(_png()))
    html = book.build(results, "smoke", root / "out", notebook_dir=notebooks)
    return html


def test_the_book_has_every_notebook_the_results_and_their_figures(site):
    for page in ("index.html", "01_first.html", "02_second.html", "results.html"):
        assert (site / page).is_file(), page
    first = (site / "01_first.html").read_text()
    assert 'href="02_second.html"' in first and "<img" in first and "61.5" in first
    assert 'href="01_first.html#summary"' in (site / "02_second.html").read_text()
    results = (site / "results.html").read_text()
    assert "<table" in results and "summary__smoke.png" in results
    assert "02 · Second" in (site / "index.html").read_text()


def test_a_missing_executed_copy_is_named(tmp_path):
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "notebooks" / "01_first.ipynb").write_text("{}")
    with pytest.raises(FileNotFoundError, match="01_first.*asit.reproduce --preset cpu"):
        book.build(tmp_path / "results", "cpu", tmp_path / "out", notebook_dir=tmp_path / "notebooks")


@pytest.mark.skipif(book_check.find_chromium(None) is None, reason="no chromium on PATH (.ci/run installs it; make book-check)")
def test_every_page_loads_in_chromium_with_its_images_and_links(site, tmp_path):
    import shutil

    problems, counts = book_check.check_site(site, book_check.find_chromium(None))
    assert problems == []
    assert counts["pages"] >= 4 and counts["images"] >= 2 and counts["internal links"] > 10
    # The check sees breakage: a copy of the site whose images and one link target are gone.
    broken = shutil.copytree(site, tmp_path / "html")
    for image in (broken / "_images").iterdir():
        image.unlink()
    (broken / "02_second.html").rename(broken / "02_moved.html")
    problems, _ = book_check.check_site(broken, book_check.find_chromium(None))
    assert any("image not drawn" in p for p in problems) and any("broken link" in p and "02_second.html" in p for p in problems)
