"""Published accuracies beside the measured ones: does a group of runs land where the authors' did?

`published.yaml` (beside this module, shipped with the package) holds Table 1 of Kontras et al., NeurIPS 2025:
every method re-run by the MLB authors' group under MLB's protocol, test accuracy mean ± std per (corpus,
input path). A group of finished runs (features, method, fusion) gets a row's published value only when
every run's shards are of the table's corpus, protocol family and input path (raw: the ResNet column, cached:
the Conformer column), the fusion is the table's, and no extractor was randomly initialised (each run
records its shards' `meta.json` as `shard_meta` in `run.json`). Otherwise the row says why no published value
applies: a synthetic stand-in or a toy corpus must never look comparable to a paper. Where one applies, the
measured mean is "within" when it lies within max(2 points, the published std) of the published mean.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from mlb.analysis.compare import GROUP_KEYS, aggregate

TABLE_FILE = Path(__file__).with_name("published.yaml")
BAND_POINTS = 2.0  # the smallest band: a 3-run std can be far below the noise of a retrain
PUBLISHED_MD = "compare_published.md"


@cache
def load_table(path: Path = TABLE_FILE) -> dict:
    """The published table (published.yaml) as a dict."""
    import yaml

    return yaml.safe_load(Path(path).read_text())


@dataclass(frozen=True)
class ShardFacts:
    """What a run's `shard_meta` says about the data it trained on."""

    corpus: str | None
    protocol: str | None
    random_init: bool  # any frozen extractor had random weights (the cached path of the demo)
    stand_in: str | None = None  # why the corpus is a synthetic stand-in (meta.json), None for a real copy


def shard_facts(meta: dict) -> ShardFacts:
    extractors = meta.get("extractors") or {}
    return ShardFacts(
        corpus=meta.get("corpus"),
        protocol=(meta.get("config") or {}).get("protocol"),
        random_init=any(bool(e.get("random_init")) for e in extractors.values()),
        stand_in=meta.get("stand_in"),
    )


def run_facts(run: dict) -> ShardFacts | None:
    """The shard facts of a run (a `load_runs` entry: its folder is `run["path"]`); None without run.json."""
    path = Path(run.get("path", "")) / "run.json"
    if not path.is_file():
        return None
    meta = json.loads(path.read_text()).get("shard_meta")
    return shard_facts(meta) if isinstance(meta, dict) else None


def measured_key(method: str) -> str:
    """The metric a row compares: the fused head, or for an `<m>-only` run the head of that modality."""
    if method.endswith("-only"):
        return f"test.unimodal.{method.removesuffix('-only')}.accuracy"
    return "test.fused.accuracy"


def _in_family(protocol: str | None, family: str) -> bool:
    return protocol is not None and (protocol == family or protocol.startswith(family + "-"))


@dataclass
class Published:
    """What the table says about one group: its value (mean, std in %) and column, or why there is none."""

    value: tuple[float, float | None] | None = None  # (mean, std or None where the source gives none)
    column: str | None = None  # the column's title, e.g. "CREMA-D ResNet"
    row: str | None = None  # the row's title, e.g. "MLB"
    differs: str | None = None  # how mlbpipe's encoders' inputs differ from the column's, where they do
    why_not: list[str] = field(default_factory=list)


def published_for(
    group: dict[str, str], facts: list[ShardFacts | None], table: dict | None = None
) -> Published:
    """The published value for a group (features, method, fusion) of runs with these shard facts (one per run),
    or every reason why none applies."""
    table = load_table() if table is None else table
    out = Published()
    row = next((r for r in table["rows"] if group["method"] in r["methods"]), None)
    if row is None:
        out.why_not.append(f"method not in the table: {group['method']}")
    else:
        out.row = row["title"]
    if not facts or any(f is None for f in facts):
        out.why_not.append("shard facts unknown: a run has no run.json with shard_meta")
        return out
    columns = table["columns"]
    corpora = sorted({str(f.corpus) for f in facts})
    known = sorted({c["corpus"] for c in columns.values()})
    if len(corpora) > 1:
        out.why_not.append(f"runs of several corpora: {', '.join(corpora)}")
        return out
    if corpora[0] not in known:
        out.why_not.append(f"stand-in corpus: {corpora[0]} is none of the table's ({', '.join(known)})")
        return out
    name = f"{corpora[0]}/{group['features']}"
    column = columns.get(name)
    if column is None:
        out.why_not.append(f"no {group['features']} column for {corpora[0]} in the table")
        return out
    out.column = column["title"]
    out.differs = column.get("differs")
    if column.get("not_comparable"):
        out.why_not.append(f"other encoders: {column['not_comparable']}")
    family = column["protocol"]
    others = sorted({str(f.protocol) for f in facts if not _in_family(f.protocol, family)})
    if others:
        out.why_not.append(
            f"other protocol: {', '.join(others)} (the table's {corpora[0]} columns: {family}; "
            "a synthetic stand-in or a split drawn anew)"
        )
    stand_ins = sorted({f.stand_in for f in facts if f.stand_in})
    if stand_ins:
        out.why_not.append(f"synthetic stand-in ({'; '.join(stand_ins)}), not the real corpus")
    if any(f.random_init for f in facts):
        out.why_not.append(
            "random-init extractors: the shards' features come from randomly initialised weights"
        )
    if group["fusion"] != table["fusion"]:
        stated = "" if table.get("fusion_stated") else ", assumed: the table does not name it"
        out.why_not.append(f"other fusion: {group['fusion']} (the table's: {table['fusion']}{stated})")
    if row is not None and name not in row["values"]:
        out.why_not.append(f"the table's copy here has no {row['title']} value for {column['title']}")
    if row is not None and not out.why_not:
        mean, std = row["values"][name]
        out.value = (float(mean), None if std is None else float(std))
    return out


def within_band(measured: float, mean: float, std: float | None) -> bool:
    """|measured - mean| <= max(2 points, std), all in percent (rounded so that a difference of exactly the
    band, e.g. 71.9 - 69.9, counts as within); 2 points where the table gives no std."""
    return round(abs(measured - mean), 6) <= max(BAND_POINTS, std or 0.0)


@dataclass
class Anchor:
    """One group of finished runs beside its published value."""

    group: dict[str, str]  # features, method, fusion
    runs: int
    measured: tuple[float, float] | None  # mean, std in %; None: no test accuracy
    published: Published
    within: bool | None  # None: no published value or no measurement


def anchors(runs: list[dict], table: dict | None = None) -> list[Anchor]:
    """Every group of `runs` (`mlb.analysis.compare.load_runs`) in the order of compare.md, with its published
    value or the reasons why none applies."""
    facts: dict[tuple, list[ShardFacts | None]] = {}
    for run in runs:
        facts.setdefault(tuple(str(run[k]) for k in GROUP_KEYS), []).append(run_facts(run))
    result = []
    for s in aggregate(runs):
        key = measured_key(s.group["method"])
        measured = (100 * s.mean[key], 100 * s.std[key]) if key in s.mean else None
        pub = published_for(s.group, facts[tuple(s.group[k] for k in GROUP_KEYS)], table)
        within = None
        if pub.value is not None and measured is not None:
            within = within_band(measured[0], *pub.value)
        result.append(Anchor(s.group, s.runs, measured, pub, within))
    return result


def published_markdown(rows: list[Anchor], table: dict | None = None) -> str:
    """The anchors as a Markdown section: a heading, what the numbers are, one line per group."""
    table = load_table() if table is None else table
    src = table["source"]
    fusion = table["fusion"] + ("" if table.get("fusion_stated") else ", assumed: the table does not name it")
    intro = (
        f'{src["table"]} of Kontras et al., "{src["paper"]}" ({src["venue"]}, arXiv {src["arxiv"]}): every '
        "method re-run by the MLB authors' group under MLB's protocol; test accuracy in %, mean ± std over 3 "
        f"folds or seeds; fusion {fusion}. A published value applies only to runs on the table's corpus, "
        "protocol and input path (raw: ResNet, cached: Conformer) with that fusion and real extractors. "
        f"Within: the measured mean lies within max({BAND_POINTS:g} points, the published std) of the "
        "published mean."
    )
    head = ["features", "method", "fusion", "runs", "measured", "published", "within"]
    head.append("no published value applies because")
    lines = ["## Published values", "", intro, "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for a in rows:
        measured = "n/a" if a.measured is None else f"{a.measured[0]:.1f} ± {a.measured[1]:.1f}"
        pub, within = "-", "-"
        if a.published.value is not None:
            mean, std = a.published.value
            spread = "" if std is None else f" ± {std:.1f}"  # a mean the source gives without its std
            pub = f"{mean:.1f}{spread} ({a.published.column}, {a.published.row})"
            within = "n/a" if a.within is None else ("yes" if a.within else "no")
        cells = [*(a.group[k] for k in GROUP_KEYS), str(a.runs), measured, pub, within]
        lines.append("| " + " | ".join([*cells, "; ".join(a.published.why_not)]) + " |")
    matched = [a for a in rows if a.published.value is not None]
    if matched:
        inside = sum(bool(a.within) for a in matched)
        summary = (
            f"A published value applies to {len(matched)} of {len(rows)} groups; {inside} lie within it."
        )
    else:
        summary = "No published value applies to any group here (each row says why)."
    notes = {a.published.column: a.published.differs for a in matched if a.published.differs}
    for column, differs in notes.items():  # said where the numbers are printed, not only in the docs
        summary += f"\n{column}: {differs}."
    return "\n".join(lines) + "\n\n" + summary + "\n"


def write_published(runs: list[dict], out_dir: Path) -> Path:
    """Write RUNS/compare_published.md (the section `published_markdown` renders) and return its path."""
    from mlb.common.atomic import atomic_write_text

    path = Path(out_dir) / PUBLISHED_MD
    atomic_write_text(path, published_markdown(anchors(runs)))
    return path
