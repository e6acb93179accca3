"""A synthetic UCF101 in the exact layout of a real copy, so the whole pipeline runs with no dataset:
`generate` plans the clips and writes the corpus with its split files (`synth_ucf101`, `SynthConfig`),
`render` makes the sound and the pictures, `media` writes the AVI files."""

from pipeline.standins.base import StandIn
from pipeline.standins.ucf101.generate import SynthConfig, SynthSummary, plan_corpus, synth_ucf101

# check: sizes the real layout cannot hold are refused before anything is written
STAND_IN = StandIn("ucf101", SynthConfig, synth_ucf101, check=plan_corpus)

__all__ = ["STAND_IN", "SynthConfig", "SynthSummary", "synth_ucf101"]
