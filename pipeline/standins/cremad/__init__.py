"""A synthetic CREMA-D in the exact layout of a real copy, so the whole pipeline runs with no dataset:
`generate` chooses the clips and writes the corpus (`synth_cremad`, `SynthConfig`), `voice` and `face` make
the sound and the pictures, `media` writes the WAV and FLV files."""

from pipeline.standins.base import StandIn
from pipeline.standins.cremad.generate import SynthConfig, SynthSummary, choose_clips, synth_cremad

# check: the clip list is drawn (and sizes it cannot satisfy refused) before anything is written
STAND_IN = StandIn("cremad", SynthConfig, synth_cremad, check=choose_clips)

__all__ = ["STAND_IN", "SynthConfig", "SynthSummary", "synth_cremad"]
