"""EfficientNet-B2 weights from a file, as a state_dict of efficientnet-pytorch's B2 (the module mlbpipe builds).

Three forms, chosen by the file's suffix, all ending in the same `load_state_dict` of the extractor:
- `.onnx`: an ONNX export of a TF-ported EfficientNet-B2, such as HSEmotion's `enet_b2_8_best.onnx` (timm's
  `tf_efficientnet_b2_ns` fine-tuned on AffectNet-8). Only the graph's constant tensors are read; nothing is
  executed or unpickled.
- `.safetensors`: a state_dict with efficientnet-pytorch's key names (what `write_safetensors` writes).
- anything else: a tensor dict for `torch.load(weights_only=True)` (efficientnet-pytorch's key names). A
  pickled whole model (HSEmotion's `.pt` files) is refused: unpickling a download can run any code.

How an ONNX export maps onto the module: initializer names are unreliable (the TorchScript exporter renames
folded weights `onnx::Conv_123`), so we go by structure. EfficientNet is one chain of convolutions (each
needs the previous one's output, the squeeze-excite ones included), so the graph's Conv nodes, in graph
order, are the module's convolutions in forward order; each must match its target's weight shape, stride
and groups. A Conv whose output feeds a BatchNormalization node takes that node's statistics; a Conv with
no BatchNormalization after it had its BatchNorm folded into its weight and bias by the exporter (what
`do_constant_folding` in eval mode does): the module's BatchNorm then becomes the identity plus that bias.
The padding is checked too: efficientnet-pytorch pads like TensorFlow ("same", the extra pixel at the end),
as timm's `tf_` models do; a PyTorch-style export (timm's `efficientnet_b2`) pads differently and would give
other features from the same weights, so it is refused.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

EFFB2_CONV_COUNT = 115  # stem + 23 blocks (2 without expansion: 4 convs; 21 with: 5) + head
ONNX_FIX = (
    "use an ONNX export of a TF-ported EfficientNet-B2 (HSEmotion's enet_b2_8_best.onnx or enet_b2_8.onnx; "
    "docs/paper-inputs.md), or a state_dict with efficientnet-pytorch's B2 key names"
)


class EffB2WeightsError(ValueError):
    """A weights file that cannot become an EfficientNet-B2 state_dict; the message names the file and the fix."""


# --- the target module's layout ------------------------------------------------------------------------


def conv_layout(model) -> list[tuple[str, str | None]]:
    """(conv name, its BatchNorm's name or None) of an efficientnet-pytorch EfficientNet, in forward order."""
    layout = [("_conv_stem", "_bn0")]
    for i, block in enumerate(model._blocks):
        prefix = f"_blocks.{i}."
        if block._block_args.expand_ratio != 1:
            layout.append((prefix + "_expand_conv", prefix + "_bn0"))
        layout.append((prefix + "_depthwise_conv", prefix + "_bn1"))
        if block.has_se:
            layout += [(prefix + "_se_reduce", None), (prefix + "_se_expand", None)]
        layout.append((prefix + "_project_conv", prefix + "_bn2"))
    layout.append(("_conv_head", "_bn1"))
    return layout


def _static_pads(conv) -> tuple[int, int, int, int]:
    """(top, left, bottom, right) zero padding that an efficientnet-pytorch conv applies to its input."""
    pad = getattr(conv, "static_padding", None)
    left, right, top, bottom = getattr(pad, "padding", (0, 0, 0, 0))  # ZeroPad2d: (left, right, top, bottom)
    return (top, left, bottom, right)


# --- reading an ONNX graph's constants ------------------------------------------------------------------


class _Constants:
    """The value of any tensor of an ONNX graph that depends on constants only (initializers, Constant nodes
    and the few shape ops an exporter writes between them, e.g. the pads of F.pad); None otherwise."""

    def __init__(self, graph):
        from onnx import numpy_helper

        self._to_array = numpy_helper.to_array
        self.values = {t.name: self._to_array(t) for t in graph.initializer}
        self.producer = {out: node for node in graph.node for out in node.output}

    def get(self, name: str) -> np.ndarray | None:
        if not name:
            return None
        if name not in self.values:
            node = self.producer.get(name)
            self.values[name] = None if node is None else self._evaluate(node, name)
        return self.values[name]

    def _evaluate(self, node, name):
        from onnx import helper

        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "Constant":
            return self._to_array(attrs["value"]) if "value" in attrs else None
        inputs = [self.get(i) for i in node.input]
        if any(x is None for x, i in zip(inputs, node.input) if i):
            return None
        op = node.op_type
        if op == "Identity":
            return inputs[0]
        if op == "Cast":
            from onnx import helper as h

            return inputs[0].astype(h.tensor_dtype_to_np_dtype(attrs["to"]))
        if op == "ConstantOfShape":
            value = self._to_array(attrs["value"]) if "value" in attrs else np.zeros(1, np.float32)
            return np.full(tuple(inputs[0]), value.reshape(-1)[0], value.dtype)
        if op == "Concat":
            return np.concatenate(inputs, axis=attrs["axis"])
        if op == "Reshape":
            shape = [d if d != 0 else inputs[0].shape[k] for k, d in enumerate(inputs[1])]
            return inputs[0].reshape(shape)
        if op == "Transpose":
            return inputs[0].transpose(attrs.get("perm"))
        if op in ("Unsqueeze", "Squeeze"):
            axes = attrs.get("axes", inputs[1] if len(inputs) > 1 else None)
            if op == "Unsqueeze":
                return np.expand_dims(inputs[0], tuple(int(a) for a in axes))
            return np.squeeze(inputs[0], None if axes is None else tuple(int(a) for a in axes))
        if op == "Slice":
            data, starts, ends = inputs[:3]
            axes = inputs[3] if len(inputs) > 3 and inputs[3] is not None else range(len(starts))
            steps = inputs[4] if len(inputs) > 4 and inputs[4] is not None else [1] * len(starts)
            index = [slice(None)] * data.ndim
            for start, end, axis, step in zip(starts, ends, axes, steps):
                index[int(axis)] = slice(int(start), int(end), int(step))
            return data[tuple(index)]
        if op == "Shape":
            return np.array(inputs[0].shape, np.int64)
        if op in ("Add", "Sub", "Mul", "Max", "Min"):
            fn = {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Max": np.maximum, "Min": np.minimum}
            return fn[op](inputs[0], inputs[1])
        if op == "Gather":
            return np.take(inputs[0], inputs[1], axis=attrs.get("axis", 0))
        return None  # an op we do not evaluate (e.g. Shape of a dynamic input): the value stays unknown


def _effective_pads(node, constants: _Constants) -> tuple[int, int, int, int] | None:
    """(top, left, bottom, right) padding a Conv node applies to its input, its own `pads` plus a zero Pad
    node right before it; None when it cannot be read statically (auto_pad, or pads computed at run time)."""
    from onnx import helper

    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    auto_pad = attrs.get("auto_pad", b"NOTSET")
    if auto_pad not in (b"NOTSET", "NOTSET"):
        return None
    top, left, bottom, right = (int(p) for p in attrs.get("pads", [0, 0, 0, 0]))
    producer = constants.producer.get(node.input[0])
    if producer is not None and producer.op_type == "Pad":
        pad_attrs = {a.name: helper.get_attribute_value(a) for a in producer.attribute}
        pads = pad_attrs.get("pads")  # opset < 11: an attribute; later: the second input
        pads = np.asarray(pads) if pads is not None else constants.get(producer.input[1])
        if pads is None or len(pads) != 8:
            return None
        top, left, bottom, right = (
            top + int(pads[2]),
            left + int(pads[3]),
            bottom + int(pads[6]),
            right + int(pads[7]),
        )
    return (top, left, bottom, right)


def _input_size(graph) -> int | None:
    """The square spatial size of the graph's image input, when the export fixed it."""
    initializers = {t.name for t in graph.initializer}
    for value in graph.input:
        if value.name in initializers:
            continue
        dims = value.type.tensor_type.shape.dim
        if len(dims) == 4 and dims[2].dim_value and dims[2].dim_value == dims[3].dim_value:
            return int(dims[2].dim_value)
    return None


def state_dict_from_onnx(path: str | Path, model) -> dict:
    """The efficientnet-pytorch state_dict (torch tensors) for `model` (an EfficientNet-B2 built with
    `EfficientNet.from_name`) from the ONNX export at `path`. Raises EffB2WeightsError when the graph is not
    an EfficientNet-B2 of TF-style padding."""
    import onnx
    import torch
    from google.protobuf.message import DecodeError
    from onnx import helper

    path = Path(path)
    try:
        graph = onnx.load(str(path)).graph
    except (DecodeError, OSError, ValueError) as err:  # not an ONNX file, or a truncated one
        raise EffB2WeightsError(f"{path}: not a readable ONNX file ({type(err).__name__}: {err}); {ONNX_FIX}")
    constants = _Constants(graph)
    convs = [node for node in graph.node if node.op_type == "Conv"]
    layout = conv_layout(model)
    if len(convs) != len(layout):
        raise EffB2WeightsError(
            f"{path}: {len(convs)} Conv nodes, EfficientNet-B2 has {len(layout)}: not an EfficientNet-B2 "
            f"export; {ONNX_FIX}"
        )
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    modules = dict(model.named_modules())
    source_size = _input_size(graph)
    # Padding depends on the input size (TF "same"), so compare with a B2 built at the export's size.
    reference = _reference_modules(source_size) if source_size else None
    unread_pads = 0
    state: dict[str, torch.Tensor] = {}
    for index, (node, (conv_name, bn_name)) in enumerate(zip(convs, layout)):
        where = f"{path}: Conv node {index} ({node.name or node.output[0]}) for {conv_name}"
        conv = modules[conv_name]
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        weight = constants.get(node.input[1])
        bias = constants.get(node.input[2]) if len(node.input) > 2 else None
        if weight is None:
            raise EffB2WeightsError(f"{where}: its weight is not a constant of the graph; {ONNX_FIX}")
        expected = tuple(conv.weight.shape)
        if weight.shape != expected or int(attrs.get("group", 1)) != conv.groups:
            raise EffB2WeightsError(
                f"{where}: weight {tuple(weight.shape)} in {attrs.get('group', 1)} groups, expected {expected} "
                f"in {conv.groups}; {ONNX_FIX}"
            )
        if tuple(attrs.get("strides", (1, 1))) != tuple(conv.stride):
            raise EffB2WeightsError(
                f"{where}: strides {attrs.get('strides')}, expected {conv.stride}; {ONNX_FIX}"
            )
        if reference is not None:
            pads = _effective_pads(node, constants)
            if pads is None:
                unread_pads += 1
            elif pads != _static_pads(reference[conv_name]):
                raise EffB2WeightsError(
                    f"{where}: pads (top, left, bottom, right) {pads} at {source_size} px, TF 'same' padding "
                    f"gives {_static_pads(reference[conv_name])}: the export pads like PyTorch (e.g. timm's "
                    f"efficientnet_b2, not tf_efficientnet_b2), so its features would differ here; {ONNX_FIX}"
                )
        state[conv_name + ".weight"] = torch.from_numpy(np.array(weight, np.float32))
        norms = [c for c in consumers.get(node.output[0], []) if c.op_type == "BatchNormalization"]
        if bn_name is None:
            if norms:
                raise EffB2WeightsError(
                    f"{where}: a BatchNormalization follows it, none in B2 here; {ONNX_FIX}"
                )
            if bias is None:
                raise EffB2WeightsError(f"{where}: the squeeze-excite conv has no bias; {ONNX_FIX}")
            state[conv_name + ".bias"] = torch.from_numpy(np.array(bias, np.float32))
            continue
        bn = modules[bn_name]
        conv_bias = np.zeros(expected[0], np.float32) if bias is None else np.asarray(bias, np.float32)
        if norms:  # BatchNorm kept as a node: its statistics, the conv's bias (if any) moved into the mean
            bn_state = _batchnorm_from_node(norms[0], constants, conv_bias, bn.eps, where)
        else:  # folded by the exporter: identity BatchNorm (unit scale, var + eps = 1) carrying the bias
            bn_state = {
                "weight": torch.ones(expected[0]),
                "bias": torch.from_numpy(conv_bias.copy()),
                "running_mean": torch.zeros(expected[0]),
                "running_var": torch.full((expected[0],), 1.0 - bn.eps),
            }
        bn_state["num_batches_tracked"] = torch.tensor(0)  # unused in eval mode; keeps the load strict
        state |= {f"{bn_name}.{key}": value for key, value in bn_state.items()}
    if unread_pads:
        warnings.warn(
            f"{path}: the padding of {unread_pads} Conv nodes could not be read from the graph; the export is "
            "taken to pad like TensorFlow (as timm's tf_efficientnet_b2, HSEmotion's base)",
            stacklevel=2,
        )
    return state


def _batchnorm_from_node(node, constants: _Constants, conv_bias: np.ndarray, eps: float, where: str) -> dict:
    """A BatchNorm's state from a BatchNormalization node after a conv with bias `conv_bias`, for a module
    whose eps is `eps` (an export with another epsilon gets its variance shifted by the difference)."""
    import torch
    from onnx import helper

    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if attrs.get("training_mode", 0):
        raise EffB2WeightsError(f"{where}: its BatchNormalization is in training mode; {ONNX_FIX}")
    values = [constants.get(name) for name in node.input[1:5]]
    if any(v is None for v in values):
        raise EffB2WeightsError(f"{where}: its BatchNormalization statistics are not constants; {ONNX_FIX}")
    scale, shift, mean, var = (np.asarray(v, np.float32) for v in values)
    var = var + np.float32(attrs.get("epsilon", 1e-5) - eps)
    if (var <= 0).any():
        raise EffB2WeightsError(f"{where}: its BatchNormalization epsilon leaves a variance <= 0; {ONNX_FIX}")
    return {
        "weight": torch.from_numpy(scale.copy()),
        "bias": torch.from_numpy(shift.copy()),
        "running_mean": torch.from_numpy(mean - conv_bias),
        "running_var": torch.from_numpy(var),
    }


def _reference_modules(image_size: int) -> dict:
    from efficientnet_pytorch import EfficientNet

    return dict(EfficientNet.from_name("efficientnet-b2", image_size=image_size).named_modules())


# --- files ------------------------------------------------------------------------------------------------


def weights_format(path: str | Path) -> str:
    suffix = Path(path).suffix.lower()
    return {".onnx": "onnx", ".safetensors": "safetensors"}.get(suffix, "torch-state-dict")


def load_state_dict_file(path: str | Path, model) -> dict:
    """The state_dict in the weights file at `path`, for the efficientnet-pytorch B2 `model` (see module doc)."""
    import pickle

    import torch

    path = Path(path)
    kind = weights_format(path)
    if kind == "onnx":
        return state_dict_from_onnx(path, model)
    if kind == "safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError) as err:
        raise EffB2WeightsError(
            f"{path}: not a plain tensor dict ({str(err).splitlines()[0]}). A pickled whole model (such as "
            "HSEmotion's enet_b2_8_best.pt) is never unpickled here, as loading it could run any code: use its "
            "ONNX export (enet_b2_8_best.onnx) as the weights, or convert that once with "
            "`mlbpipe convert-effb2 enet_b2_8_best.onnx enet_b2_8_best.safetensors` (docs/paper-inputs.md)"
        ) from err
    if not isinstance(state, dict):
        raise EffB2WeightsError(f"{path}: holds a {type(state).__name__}, not a state_dict; {ONNX_FIX}")
    return state


def write_safetensors(state: dict, path: str | Path, source: str) -> Path:
    """Save a B2 state_dict as safetensors, naming the file it came from in the metadata."""
    from safetensors.torch import save_file

    path = Path(path)
    save_file({k: v.contiguous() for k, v in state.items()}, str(path), metadata={"source": source})
    return path
