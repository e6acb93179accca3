"""EfficientNet-B2s of HSEmotion's architecture (timm's tf_efficientnet_b2: TF-ported, "same" padding, BatchNorm
eps 1e-3, which efficientnet-pytorch's B2 is too) with seeded weights, and their ONNX exports, as HSEmotion
exported enet_b2_8_best.onnx (TorchScript exporter, opset 11, a fixed image size)."""

from __future__ import annotations

import warnings
from pathlib import Path

import torch


def seeded_b2(seed: int, image_size: int, name: str = "efficientnet-b2"):
    """An efficientnet-pytorch EfficientNet in eval mode with seeded convolutions and seeded BatchNorm
    statistics and affines (so that folding them into the convolutions changes the weights)."""
    from efficientnet_pytorch import EfficientNet

    model = EfficientNet.from_name(name, image_size=image_size)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Conv2d):
                fan_in = module.weight[0].numel()
                module.weight.normal_(0.0, (2.0 / fan_in) ** 0.5, generator=generator)
                if module.bias is not None:
                    module.bias.normal_(0.0, 0.1, generator=generator)
            elif isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0.0, 0.1, generator=generator)
                module.running_var.uniform_(0.5, 1.5, generator=generator)
                module.weight.uniform_(0.8, 1.2, generator=generator)
                module.bias.normal_(0.0, 0.1, generator=generator)
    return model.eval()


def pytorch_style_padding(model):
    """The same model padding like PyTorch (symmetric kernel // 2, as timm's non-tf efficientnet_b2): same
    weights, other features wherever a strided conv meets an even input."""
    for module in model.modules():
        if isinstance(module, torch.nn.Conv2d) and hasattr(module, "static_padding"):
            half = module.kernel_size[0] // 2
            module.static_padding = torch.nn.ZeroPad2d(half) if half else torch.nn.Identity()
    return model


def export_onnx(model, path: str | Path, image_size: int, fold: bool = True) -> Path:
    """Export `model` (classifier included, as HSEmotion did) with the TorchScript exporter at a fixed
    `image_size`, batch dynamic; `fold` folds every BatchNorm into its conv (HSEmotion's do_constant_folding)."""
    path = Path(path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation and constant-folding notes
        torch.onnx.export(
            model,
            torch.randn(1, 3, image_size, image_size),
            str(path),
            dynamo=False,
            opset_version=11,
            do_constant_folding=fold,
            input_names=["input"],
            output_names=["output"],
            dynamic_axes={"input": {0: "batch_size"}, "output": {0: "batch_size"}},
        )
    return path
