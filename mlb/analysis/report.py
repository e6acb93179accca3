"""The paper's figures, drawn from the library's own functions and from `mlbpipe compare` results.

- Figure 2: MLB's k against r for several (α, β_max), from `mlb.balancing.mlb_coefficients` itself.
- Figure 3: test accuracy by method and fusion head, with 95% bootstrap intervals over test clips when the
  runs have test_predictions.json (`mlb.analysis.stats`), else mean ± std over seeds/folds.
- Figure 4: the agreement groups (which unimodal heads are right) with the fused accuracy per method.
- Figure 5: ECE per method, and a reliability diagram of the fused output.
- Unimodal heads: each method's audio and video head beside the same encoder trained alone (the gap
  that joint training opens for the weaker modality, and what Multi-Loss and MLB do to it).
- Training curves: k_i per step and the unimodal heads' validation accuracy per epoch.

Runs of `audio-only` / `video-only` (one encoder trained alone) appear only in the unimodal-heads figure:
their fused output is not trained.

Figures with a bar per method list the methods down the y axis (in the tables' order), in panels side by
side (Figure 3: one per fusion head): many methods make a figure taller, never wider than a page.

Every figure function takes plain data and a path, writes a PNG (and an SVG beside it) and returns the
PNG's path; `write_report` draws them all for a runs folder and writes `report.md` linking them. Figures
are drawn on bare `matplotlib.figure.Figure`s: importing this module leaves matplotlib's backend alone.
"""

from __future__ import annotations

import json
import textwrap
from collections import defaultdict
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.figure import Figure

from mlb.analysis.compare import GroupSummary, aggregate, load_runs, to_markdown
from mlb.common.atomic import atomic_write_text

COLORS = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
DPI = 130  # of the saved PNGs
PAGE_WIDTH = 10.0  # inches (1300 px): the widest figure, still legible on a doc page ~900 px wide
ROW = 0.28  # inches per method: figures with a bar per method grow down the page with the methods, not across


def _subplots(ncols: int = 1, *, figsize: tuple[float, float]):
    """`pyplot.subplots(1, ncols)` without pyplot: a bare Figure draws to files through the renderer of
    the file format, so neither the global backend nor pyplot's list of open figures is touched."""
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(1, ncols)


def _method_panels(
    n_methods: int, ncols: int = 1, *, width: float | None = None, sharex: bool = False, sharey: bool = True
):
    """A figure of `ncols` panels side by side with the methods down the y axis: as tall as `n_methods` rows of
    bars need, at most a page wide however many methods there are."""
    width = width or min(PAGE_WIDTH, 4 + 2.2 * ncols)
    fig = Figure(figsize=(width, 1.9 + ROW * max(n_methods, 5)))
    return fig, list(fig.subplots(1, ncols, sharex=sharex, sharey=sharey, squeeze=False)[0])


def _method_axis(ax, methods: list[str]) -> None:
    """The methods as y tick labels, the first at the top (as in the tables)."""
    ax.set_yticks(range(len(methods)), methods)
    ax.set_ylim(max(1, len(methods)) - 0.5, -0.5)


def _wrap(text: str, fig: Figure, fontsize: float) -> str:
    """`text` in lines that fit the figure's width (a character is about half the font size wide)."""
    return textwrap.fill(text, int(fig.get_figwidth() * 72 / (0.55 * fontsize)))


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    fig.savefig(path.with_suffix(".svg"))
    return path


def figure_k_vs_r(
    path: Path, settings=((0.5, 10.0), (1.0, 10.0), (2.0, 5.0), (5.0, 2.0), (2.0, 1.0))
) -> Path:
    """Paper Figure 2: k = f(r) for several (α, β_max), two modalities."""
    import torch

    from mlb.balancing import mlb_coefficients

    r = np.linspace(0.05, 3.0, 300)
    fig, ax = _subplots(figsize=(6.4, 4.2))
    for i, (alpha, beta_max) in enumerate(settings):
        # scores (s_a, s_v) = (1, r) give r_a = s_v / s_a = r; k_a is the first coefficient.
        k = [float(mlb_coefficients(torch.tensor([1.0, float(x)]), alpha, beta_max)[0]) for x in r]
        ax.plot(r, k, color=COLORS[i % len(COLORS)], label=f"α={alpha:g}, β_max={beta_max:g}")
    ax.axhline(1.0, color="grey", lw=0.8, ls=":")
    ax.axvline(1.0, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("performance ratio r_i  (mean of the others' s_j / s_i)")
    ax.set_ylabel("balancing coefficient k_i")
    ax.set_title("MLB: k_i > 1 accelerates a lagging modality, k_i < 1 slows the leader")
    ax.legend(fontsize=8)
    return _save(fig, path)


def is_alone(method: str) -> bool:
    """`audio-only` / `video-only`: one encoder trained alone, no trained fused output."""
    return method.endswith("-only")


def _head_of(key: str) -> str | None:
    """The predictions head behind a test-accuracy key ("test.fused.accuracy" -> "fused"), else None."""
    parts = key.split(".")
    if parts == ["test", "fused", "accuracy"]:
        return "fused"
    if len(parts) == 4 and parts[0] == "test" and parts[1] == "unimodal" and parts[3] == "accuracy":
        return parts[2]
    return None


def accuracy_bars(
    summaries: list[GroupSummary], key: str = "test.fused.accuracy", runs: list[dict] | None = None
) -> tuple[dict[tuple[str, str], tuple[float, float, float]], str]:
    """Figure 3's bars: ({(method, fusion): (height, error below, error above)} in %, what the errors are).

    When every run of every drawn group has test_predictions.json, the height is the mean accuracy over
    folds and the errors reach the 95% test-only bootstrap interval (`mlb.analysis.stats.accuracy_interval`:
    the corpus's groups of test clips, or clips, resampled; retraining not covered); otherwise, for every bar alike, mean ± sample std over the runs, from the
    summaries.
    """
    from mlb.analysis.stats import PREDICTIONS, accuracy_interval

    summaries = [s for s in summaries if not is_alone(s.group["method"]) and key in s.mean]
    head = _head_of(key)
    members: dict[tuple, list[dict]] = defaultdict(list)
    for run in runs or []:
        members[(str(run["features"]), str(run["method"]), str(run["fusion"]))].append(run)
    groups = [members[(s.group["features"], s.group["method"], s.group["fusion"])] for s in summaries]

    def has_predictions(run: dict) -> bool:
        return "path" in run and (Path(run["path"]) / PREDICTIONS).is_file()

    # all bars or none: a figure mixing intervals and stds would invite comparing unlike things
    with_predictions = head is not None and all(g and all(map(has_predictions, g)) for g in groups)
    bars = {}
    for s, group in zip(summaries, groups):
        name = (s.group["method"], s.group["fusion"])
        if with_predictions:
            estimate, low, high = accuracy_interval(group, head)
            bars[name] = (100 * estimate, 100 * (estimate - low), 100 * (high - estimate))
        else:
            bars[name] = (100 * s.mean[key], 100 * s.std[key], 100 * s.std[key])
    folds = "/".join(map(str, sorted({s.runs for s in summaries})))
    if with_predictions:
        what = (
            f"mean over {folds} seeds/folds; error bars: 95% bootstrap interval over the test set "
            "(groups of clips resampled), not covering retraining"
        )
    else:
        what = f"mean ± std over {folds} runs"
    return bars, what


def figure_accuracy(
    summaries: list[GroupSummary],
    path: Path,
    key: str = "test.fused.accuracy",
    label: str = "test accuracy (%)",
    runs: list[dict] | None = None,
) -> Path:
    """Paper Figure 3: one panel per fusion head (one colour each), a bar per method down a shared axis, so
    that many methods make the figure taller, not wider. Error bars: the 95% bootstrap interval over test
    clips when `runs` (the summaries' runs) all have test_predictions.json, else std over seeds; the title
    says which (see `accuracy_bars`)."""
    bars, what = accuracy_bars(summaries, key, runs)
    methods = list(dict.fromkeys(m for m, _ in bars))
    fusions = list(dict.fromkeys(f for _, f in bars))
    # the fusion heads most methods ran first: late-linear, which every method supports
    fusions.sort(key=lambda f: -sum(fusion == f for _, fusion in bars))
    fig, axes = _method_panels(len(methods), max(1, len(fusions)), sharex=True)
    for j, (ax, fusion) in enumerate(zip(axes, fusions)):
        drawn = [(i, bars[(m, fusion)]) for i, m in enumerate(methods) if (m, fusion) in bars]
        ax.barh(
            [i for i, _ in drawn],
            [height for _, (height, _, _) in drawn],
            0.7,
            xerr=[[low for _, (_, low, _) in drawn], [high for _, (_, _, high) in drawn]],
            capsize=2,
            color=COLORS[j % len(COLORS)],
        )
        for i, method in enumerate(methods):  # a gap would read as 0%
            if (method, fusion) not in bars:
                ax.text(1, i, "not run", va="center", fontsize=8, color="grey")
        ax.set_title(fusion, fontsize=10)
        ax.set_xlabel(label)
        ax.grid(axis="x", alpha=0.3)
    _method_axis(axes[0], methods)
    fig.suptitle(f"{label} by method and fusion head\n" + _wrap(f"({what})", fig, 11), fontsize=11)
    return _save(fig, path)


def agreement_by_method(runs: list[dict], fusion: str) -> dict[str, list[dict]]:
    """Mean over seeds of each agreement group's clip share and fused accuracy, per method."""
    per_method: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    for run in runs:
        if run["fusion"] != fusion or "agreement" not in run["test"] or is_alone(run["method"]):
            continue
        total = sum(row["count"] for row in run["test"]["agreement"]) or 1
        for row in run["test"]["agreement"]:
            name = group_name(row)
            per_method[run["method"]][name].append((row["count"] / total, row["fused_accuracy"]))
    table = {}
    for method, groups in per_method.items():
        table[method] = []
        for name, values in groups.items():
            accs = [a for _, a in values if a is not None]
            table[method].append(
                {
                    "group": name,
                    "share": float(np.mean([s for s, _ in values])),
                    "fused_accuracy": float(np.mean(accs)) if accs else None,
                }
            )
    return table


def group_name(row: dict) -> str:
    """'both wrong', 'audio only', 'video only', 'both right' (or the list of right heads for M > 2)."""
    right = [k[: -len("_correct")] for k, v in row.items() if k.endswith("_correct") and v]
    heads = [k for k in row if k.endswith("_correct")]
    if not right:
        return "all wrong" if len(heads) > 2 else "both wrong"
    if len(right) == len(heads):
        return "all right" if len(heads) > 2 else "both right"
    return " + ".join(right) + " only"


def figure_agreement(runs: list[dict], path: Path, fusion: str = "late-linear") -> Path:
    """Paper Figure 4: fused accuracy within each agreement group, one panel per group and a bar per method
    down a shared axis (in the tables' order)."""
    table = agreement_by_method(runs, fusion)
    methods = [m for m in dict.fromkeys(s.group["method"] for s in aggregate(runs)) if m in table]
    groups = list(dict.fromkeys(row["group"] for rows in table.values() for row in rows))
    fig, axes = _method_panels(len(methods), max(1, len(groups)), sharex=True)
    for j, (ax, name) in enumerate(zip(axes, groups)):
        rows = {m: r for m in methods for r in table[m] if r["group"] == name}
        drawn = [(i, rows[m]["fused_accuracy"]) for i, m in enumerate(methods) if m in rows]
        drawn = [(i, 100 * acc) for i, acc in drawn if acc is not None]  # None: no clip in the group
        ax.barh([i for i, _ in drawn], [acc for _, acc in drawn], 0.7, color=COLORS[j % len(COLORS)])
        share = np.mean([r["share"] for r in rows.values()])
        ax.set_title(f"{name}\n({100 * share:.0f}% of clips)", fontsize=10)
        ax.set_xlim(0, 105)
        ax.set_xlabel("fused accuracy (%)")
        ax.grid(axis="x", alpha=0.3)
    _method_axis(axes[0], methods)
    fig.suptitle(
        f"Which unimodal heads are right, and what the fused output does in each case ({fusion})", fontsize=11
    )
    return _save(fig, path)


def figure_ece(
    summaries: list[GroupSummary], runs: list[dict], path: Path, fusion: str = "late-linear"
) -> Path:
    """Paper Figure 5: ECE per method (left, a bar per method down the axis) and a reliability diagram of the
    fused output (right, a line per method: colours repeat after ten, with another line style)."""
    rows = [
        s
        for s in summaries
        if s.group["fusion"] == fusion and "test.fused.ece" in s.mean and not is_alone(s.group["method"])
    ]
    fig, (left, right) = _method_panels(len(rows), 2, width=PAGE_WIDTH, sharey=False)
    left.barh(
        range(len(rows)),
        [100 * s.mean["test.fused.ece"] for s in rows],
        0.7,
        xerr=[100 * s.std["test.fused.ece"] for s in rows],
        capsize=2,
        color=[COLORS[i % len(COLORS)] for i in range(len(rows))],
    )
    _method_axis(left, [s.group["method"] for s in rows])
    left.set_xlabel("ECE (%, 15 bins; lower is better)")
    left.set_title(f"Calibration of the fused output ({fusion})", fontsize=10)
    left.grid(axis="x", alpha=0.3)

    right.plot([0, 1], [0, 1], color="grey", ls=":", lw=1, label="perfect calibration")
    for i, s in enumerate(rows):
        bins = _pooled_reliability(
            [r for r in runs if r["method"] == s.group["method"] and r["fusion"] == fusion]
        )
        if bins is None:
            continue
        conf, acc = bins
        style = ("-", "--", ":")[i // len(COLORS) % 3]
        right.plot(conf, acc, style, marker="o", ms=3, color=COLORS[i % len(COLORS)], label=s.group["method"])
    right.set_xlabel("confidence (top softmax probability)")
    right.set_ylabel("accuracy")
    right.set_title("Reliability diagram (test, pooled over seeds)", fontsize=10)
    right.legend(fontsize=7, ncol=1 + len(rows) // 12, loc="upper left")
    return _save(fig, path)


def _pooled_reliability(runs: list[dict]):
    """Per-bin (confidence, accuracy) pooled over runs from metrics' `reliability` counts, or None."""
    total = None
    for run in runs:
        rel = run["test"]["fused"].get("reliability")
        if rel is None:
            continue
        arr = np.array([rel["count"], rel["correct"], rel["confidence_sum"]], dtype=np.float64)  # [3, bins]
        total = arr if total is None else total + arr
    if total is None:
        return None
    keep = total[0] > 0
    return total[2][keep] / total[0][keep], total[1][keep] / total[0][keep]


def trains_head(method: str, modality: str) -> bool:
    """Whether `method` trains `modality`'s head: every method trains (or probes) each head, but an encoder
    trained alone has only its own (`video-only`'s audio head is a probe on an untrained encoder)."""
    return not is_alone(method) or method == f"{modality}-only"


def head_bars(
    summaries: list[GroupSummary], fusion: str = "late-linear"
) -> dict[str, dict[str, tuple[float, float]]]:
    """The unimodal-heads figure's bars: {modality: {method: (mean, std) test accuracy in %}}, for the
    `fusion` head, only the heads a method trains (`trains_head`)."""
    bars: dict[str, dict[str, tuple[float, float]]] = {}
    for s in summaries:
        if s.group["fusion"] != fusion:
            continue
        for key in s.mean:
            head = _head_of(key)  # a unimodal head's test accuracy, or None / "fused"
            if head not in (None, "fused") and trains_head(s.group["method"], head):
                bars.setdefault(head, {})[s.group["method"]] = (100 * s.mean[key], 100 * s.std[key])
    return dict(sorted(bars.items()))


def figure_heads(summaries: list[GroupSummary], path: Path, fusion: str = "late-linear") -> Path:
    """Each method's unimodal heads (test accuracy, a group of bars per method down the axis) beside the
    encoders trained alone (`head_bars`)."""
    methods = list(dict.fromkeys(s.group["method"] for s in summaries if s.group["fusion"] == fusion))
    bars = head_bars(summaries, fusion)
    height = 0.8 / max(1, len(bars))
    fig, (ax,) = _method_panels(len(methods), width=7.5)
    for j, (m, by_method) in enumerate(bars.items()):
        drawn = [(i, by_method[method]) for i, method in enumerate(methods) if method in by_method]
        ys = [i + (j - (len(bars) - 1) / 2) * height for i, _ in drawn]
        color = COLORS[j % len(COLORS)]
        ax.barh(
            ys, [mean for _, (mean, _) in drawn], height, xerr=[std for _, (_, std) in drawn], capsize=2,
            label=f"{m} head", color=color,
        )  # fmt: skip
        if f"{m}-only" in by_method:  # the same encoder trained alone: the reference line
            ax.axvline(
                by_method[f"{m}-only"][0], color=color, ls="--", lw=1, label=f"{m} encoder trained alone"
            )
    _method_axis(ax, methods)
    ax.set_xlabel("test accuracy of the unimodal head (%)")
    fig.suptitle(f"Unimodal heads vs the encoder trained alone ({fusion})", fontsize=11)
    if bars:  # above the axes: the bars fill them
        ax.legend(fontsize=8, ncol=2, loc="lower center", bbox_to_anchor=(0.5, 1.0))
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, path)


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def figure_training_curves(run_dir: Path, path: Path, title: str = "") -> Path:
    """k_i per step (from steps.jsonl) and unimodal validation accuracy per epoch (epochs.jsonl); `title`
    (the run's folder inside the runs folder, never an absolute path) heads the figure."""
    steps = read_jsonl(run_dir / "steps.jsonl") if (run_dir / "steps.jsonl").exists() else []
    epochs = read_jsonl(run_dir / "epochs.jsonl") if (run_dir / "epochs.jsonl").exists() else []
    fig, (left, right) = _subplots(2, figsize=(11, 4.0))
    k_names = sorted({k for row in steps for k in row if k.startswith("k_")})
    for i, name in enumerate(k_names):
        xs = [row["step"] for row in steps if name in row]
        ys = np.array([row[name] for row in steps if name in row])
        left.plot(xs, ys, lw=0.6, alpha=0.35, color=COLORS[i % len(COLORS)])
        window = max(1, len(ys) // 30)
        smooth = np.convolve(ys, np.ones(window) / window, mode="valid") if len(ys) >= window else ys
        left.plot(xs[window - 1 :], smooth, lw=1.6, color=COLORS[i % len(COLORS)], label=name)
    left.axhline(1.0, color="grey", ls=":", lw=1)
    left.set_xlabel("training step")
    left.set_ylabel("k_i (gradient multiplier)")
    left.set_title(
        "Balancing coefficients per step" if k_names else "No balancing coefficients (method has none)"
    )
    if k_names:
        left.legend(fontsize=8)
    acc_names = sorted({k for row in epochs for k in row if k.startswith("val/acc")})
    for i, name in enumerate(acc_names):
        right.plot(
            [row["epoch"] for row in epochs if name in row],
            [100 * row[name] for row in epochs if name in row],
            marker="o",
            ms=3,
            color=COLORS[i % len(COLORS)],
            label=name.removeprefix("val/"),
        )
    right.set_xlabel("epoch")
    right.set_ylabel("validation accuracy (%)")
    right.set_title("Fused and unimodal heads on validation")
    if acc_names:
        right.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=8)
    return _save(fig, path)


class NoRunsError(ValueError):
    """The runs folder holds no finished run (no `metrics.json` written by the trainer)."""


def write_report(runs: Path, out: Path | None = None, fusion: str = "late-linear") -> list[Path]:
    """Draw every figure for the runs under `runs` into `out` (default `runs/figures`) and write
    `out/report.md`: the comparison table, then a link to each figure. Returns the PNGs, in report order.

    Figure 2 once; per input path found in the runs, Figures 3-5 and the unimodal heads (agreement, ECE
    and heads for the `fusion` head), then training curves of the first run (in path order: usually the
    first seed) of each (method, fusion).
    Raises NoRunsError, before writing anything, when no run under `runs` is finished.
    """
    runs = Path(runs)
    out = Path(out) if out is not None else runs / "figures"
    all_runs = load_runs(runs)
    if not all_runs:
        raise NoRunsError(f"no finished runs under {runs}: run `mlbpipe compare` first")
    summaries = aggregate(all_runs)
    made = [figure_k_vs_r(out / "fig2_k_vs_r.png")]
    for features in sorted({s.group["features"] for s in summaries}):  # one set of figures per input path
        sub = [s for s in summaries if s.group["features"] == features]
        sub_runs = [r for r in all_runs if r["features"] == features]
        made += [
            figure_accuracy(sub, out / f"fig3_accuracy_{features}.png", runs=sub_runs),
            figure_agreement(sub_runs, out / f"fig4_agreement_{features}.png", fusion),
            figure_ece(sub, sub_runs, out / f"fig5_ece_{features}.png", fusion),
            figure_heads(sub, out / f"heads_{features}.png", fusion),
        ]
        firsts: dict[tuple[str, str], dict] = {}
        for run in sub_runs:
            firsts.setdefault((run["method"], run["fusion"]), run)
        for (method, fus), run in firsts.items():
            title = Path(run["path"]).relative_to(runs).as_posix()  # the figure names no absolute path
            made.append(
                figure_training_curves(
                    Path(run["path"]), out / f"curves_{features}_{method}_{fus}.png", title
                )
            )
    lines = ["# mlbpipe report", "", to_markdown(summaries), ""]
    lines += [f"![{p.stem}]({p.name})" for p in made]
    atomic_write_text(out / "report.md", "\n".join(lines) + "\n")
    return made
