"""`mlbpipe convert-effb2`: an EfficientNet-B2 weights file (an ONNX export, e.g. HSEmotion's emotion-trained
`enet_b2_8_best.onnx`, or a state_dict) into a `.safetensors` state_dict with efficientnet-pytorch's key names,
read without executing or unpickling anything (pipeline.compute.effb2_weights)."""

from __future__ import annotations

from pathlib import Path

import typer

from pipeline.cli.common import command_errors


def cli(
    source: Path = typer.Argument(
        ..., metavar="SOURCE", help="The weights: an ONNX export (.onnx) or a state_dict file."
    ),
    out: Path = typer.Argument(..., metavar="OUT", help="The .safetensors file to write."),
) -> None:
    """Convert EfficientNet-B2 weights to a .safetensors state_dict that features.effb2.weights accepts. The
    ONNX file itself is accepted there too: converting only saves reading the graph at every start."""
    with command_errors("mlbpipe convert-effb2"):
        if out.suffix != ".safetensors":
            raise ValueError(f"{out}: the output must end in .safetensors")
        if not source.is_file():
            raise ValueError(f"{source}: no such file")
        from pipeline.compute.effb2_weights import write_safetensors
        from pipeline.compute.extractors import EffNetB2Config, build_effnet_b2

        # Built through the extractor's own loading path, so a file that converts is one that loads.
        model = build_effnet_b2(EffNetB2Config(weights=str(source), image_size=224))
        write_safetensors(model.state_dict(), out, source=source.name)
        typer.echo(f"wrote {out} (from {source.name}); use it as features.effb2.weights")
