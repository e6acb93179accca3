"""What a synthetic stand-in provides (`StandIn`), and what every one reports when it is done (`Summary`).

A stand-in writes a copy of one corpus in that corpus's exact layout, so that the whole pipeline runs with no
data set: `mlbpipe synth NAME OUT` and DVC's `synth` stage. It is named after its corpus, and the corpus's
plug-in (pipeline.corpora) then reads the copy as it reads a real one: nothing downstream knows the difference,
except the coverage report that calls a copy a stand-in.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def _no_check(config: Any) -> None:
    return None


@dataclass(frozen=True)
class StandIn:
    """name: the corpus it stands in for (its name in pipeline.corpora);
    config: the dataclass of its options: the fields are `mlbpipe synth NAME`'s options and params.yaml's
        `synth.NAME` keys (default and help from the field's metadata), its docstring the command's help;
    synthesize(out, config): write the copy into the folder `out`, returning what `describe()`s it (a Summary);
    check(config): raise ValueError for options that cannot be satisfied, before anything is written."""

    name: str
    config: type
    synthesize: Callable[[Path, Any], Any]
    check: Callable[[Any], Any] = _no_check


@dataclass(kw_only=True)
class Summary:
    """What a stand-in wrote; `describe()` is what `mlbpipe synth` prints: the stand-in's own `lines()`, then
    how many defects it planted."""

    out_dir: Path
    defects: list[dict] = field(default_factory=list)  # the records of synth_defects.json
    seconds: float = 0.0  # the whole run

    def lines(self) -> list[str]:
        return [f"wrote a stand-in to {self.out_dir} in {self.seconds:.1f} s"]

    def describe(self) -> str:
        lines = self.lines()
        if self.defects:
            lines.append(f"  defects: {len(self.defects)} (listed in synth_defects.json)")
        return "\n".join(lines)
