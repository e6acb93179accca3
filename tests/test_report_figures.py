"""The report's figures stay readable at a page's width however many methods and fusion heads are compared:
a bar per method goes down the y axis, so more methods make a figure taller, never wider."""

from __future__ import annotations

import struct

import pytest
from matplotlib.text import Text

from mlb.analysis import report
from mlb.analysis.compare import aggregate

pytestmark = pytest.mark.unit

# the bench: every method (the two encoders trained alone among them) and every fusion head
METHODS = [
    "joint", "multi-loss", "mlb", "agm", "dgl", "dnr", "ensemble", "gblending", "mcr", "mla", "mmcosine",
    "mmpareto", "mslr", "ogm", "ogm-ge", "pmr", "reconboost", "uni-pre-finetuned", "uni-pre-frozen",
    "audio-only", "video-only",
]  # fmt: skip
FUSIONS = ["late-linear", "mid-mlp", "film", "gated", "tf"]
SHOWN_WIDTH = 900  # px: how wide a doc page shows a figure


def _run(method: str, fusion: str, seed: int) -> dict:
    acc = 0.5 + 0.01 * (len(method) + seed)
    head = {"accuracy": acc, "macro_f1": acc, "ece": 0.1}
    agreement = [  # two heads: both wrong, video only, audio only, both right
        {"audio_correct": a, "video_correct": v, "count": 5, "fused_accuracy": 0.2 + 0.2 * a + 0.4 * v}
        for a in (False, True)
        for v in (False, True)
    ]
    test = {
        "fused": head,
        "agreement": agreement,
        "unimodal": {"audio": {"accuracy": 0.6}, "video": {"accuracy": 0.3}},
    }
    return {
        "method": method,
        "fusion": fusion,
        "features": "raw",
        "seed": seed,
        "validation": {"fused": head},
        "test": test,
    }


def _runs(methods: list[str], fusions: list[str]) -> list[dict]:
    """Two seeds of each (method, fusion); OGM-GE refuses every fusion head but Late-Linear, as it does."""
    return [
        _run(m, f, seed)
        for m in methods
        for f in fusions
        for seed in (0, 1)
        if m != "ogm-ge" or f == "late-linear"
    ]


def _draw(runs: list[dict], out) -> dict:
    """{name: (PNG path, its Figure)} of every figure with a bar per method."""
    figures, save = [], report._save
    summaries = aggregate(runs)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(report, "_save", lambda fig, path: figures.append(fig) or save(fig, path))
        paths = {
            "fig3": report.figure_accuracy(summaries, out / "fig3.png", runs=runs),
            "fig4": report.figure_agreement(runs, out / "fig4.png"),
            "fig5": report.figure_ece(summaries, runs, out / "fig5.png"),
            "heads": report.figure_heads(summaries, out / "heads.png"),
        }
    return {name: (path, fig) for (name, path), fig in zip(paths.items(), figures)}


def _png_size(path) -> tuple[int, int]:
    width, height = struct.unpack(">II", path.read_bytes()[16:24])  # the IHDR chunk
    return width, height


@pytest.mark.parametrize(("n_methods", "n_fusions"), [(21, 5), (3, 2), (1, 1)])
def test_each_figure_fits_a_page_and_its_text_stays_legible_there(tmp_path, n_methods, n_fusions):
    """At most 1300 px wide and no extreme shape, however many methods; shown on a page, the titles and the
    method names are at least 10 px high."""
    drawn = _draw(_runs(METHODS[:n_methods], FUSIONS[:n_fusions]), tmp_path)
    for name, (png, fig) in drawn.items():
        width, height = _png_size(png)
        assert width <= 1300 and 0.25 <= height / width <= 1.5, (name, width, height)
        px = report.DPI / 72 * min(1, SHOWN_WIDTH / width)  # pixels per point, shown on the page
        suptitle = [t for t in fig.findobj(Text) if t.get_text() and t.get_text() == fig.get_suptitle()]
        titles = [ax.title for ax in fig.axes if ax.get_title()]
        labels = [t for ax in fig.axes for t in ax.get_yticklabels() if t.get_visible()]
        for text in suptitle + titles + labels:
            assert text.get_fontsize() * px >= 10, (name, text.get_text(), text.get_fontsize())


def test_figure_3_has_a_panel_per_fusion_head_and_names_every_method_once(tmp_path):
    runs = _runs(METHODS, FUSIONS)
    (_, fig) = _draw(runs, tmp_path)["fig3"]
    # late-linear, which every method runs, first; the others in the tables' order
    assert [ax.get_title() for ax in fig.axes] == ["late-linear", "film", "gated", "mid-mlp", "tf"]
    drawn = [m for m in METHODS if not report.is_alone(m)]
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == drawn
    assert all(not label.get_visible() for ax in fig.axes[1:] for label in ax.get_yticklabels())
    assert "mean ± std over 2 runs" in fig.get_suptitle()
    for ax in fig.axes:  # OGM-GE's refused heads are marked, not an empty row that reads as 0%
        marks = [t for t in ax.texts if t.get_text() == "not run"]
        assert len(marks) == (ax.get_title() != "late-linear"), ax.get_title()
