"""The stand-in registry: `get_standin(name)` gives the synthetic stand-in of corpus `name`
(pipeline.standins.base.StandIn), the generator behind `mlbpipe synth NAME`.

Stand-ins live beside the corpora, not inside them: a corpus plug-in reads a layout, a stand-in writes one, and
nothing under pipeline.corpora imports this package, so that a DVC stage which prepares a copy never depends
on a generator (editing one reruns only the `synth` stages). The built-in stand-ins are packages of this
folder, imported on first use, and share `common`; an installed package adds one with an entry point in the
group `mlbpipe.standins` (docs/corpora/adding.md); a test may call `register_standin(...)`.
"""

from __future__ import annotations

from pipeline.corpora.base import CorpusError
from pipeline.plugins import Registry
from pipeline.standins.base import StandIn, Summary

# packages pipeline/standins/<name>/, each with a `STAND_IN`
BUILTIN = ("cremad", "ave", "ucf101", "vggsound", "kinetics_sounds")
ENTRY_POINTS = "mlbpipe.standins"  # the entry-point group in which an installed package names its stand-in

_standins = Registry("stand-in", StandIn, __name__, BUILTIN, "STAND_IN", ENTRY_POINTS, CorpusError)


def register_standin(standin: StandIn) -> StandIn:
    """Make `standin` available by its corpus's name to `get_standin` and `mlbpipe synth`."""
    return _standins.register(standin)


def get_standin(name: str) -> StandIn:
    """The stand-in of corpus `name` (a built-in or outside one is loaded on first use). Raises CorpusError for
    a corpus without one and for an outside plug-in that does not load, naming its package and the fix."""
    return _standins.get(name)


def standin_names() -> list[str]:
    """Every corpus with a stand-in: the built-in ones, the installed plug-ins (not loaded) and those registered."""
    return _standins.names()


__all__ = ["BUILTIN", "StandIn", "Summary", "get_standin", "register_standin", "standin_names"]
