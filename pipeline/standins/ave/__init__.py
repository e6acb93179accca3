"""A synthetic AVE in the exact layout of a real copy, so the whole pipeline runs with no dataset:
`generate` plans the videos and rows and writes the corpus (`synth_ave`, `SynthConfig`), `scene` makes the
sound and the pictures with each category's cue, `media` writes the MP4 files."""

from pipeline.standins.ave.generate import SynthConfig, SynthSummary, plan_corpus, synth_ave
from pipeline.standins.base import StandIn

# check: ids and rows are planned before anything is written
STAND_IN = StandIn("ave", SynthConfig, synth_ave, check=plan_corpus)

__all__ = ["STAND_IN", "SynthConfig", "SynthSummary", "synth_ave"]
