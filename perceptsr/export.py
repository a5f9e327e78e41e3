"""ONNX export of a generator, verified with onnxruntime against PyTorch before the file is written.

>>> from perceptsr.export import export_onnx
>>> report = export_onnx("net_g.safetensors", "net_g.onnx")            # doctest: +SKIP
>>> [(c.label, c.max_abs_diff) for c in report.checks]                # doctest: +SKIP

**The graph.** Input ``input`` ``(N, C, H, W)``, output ``output`` ``(N, C, H*s, W*s)``, float32
(float16 with ``fp16=True``), batch, height and width dynamic, opset 17 by default. The output is
the network's, unclamped (``perceptsr upscale`` clamps to [0, 1] after the network; so should the
consumer). The metadata properties record the architecture, scale and source file.

**Input sizes.** Networks whose input side must be a multiple ``k`` (RRDBNet x2/x1 pixel-unshuffle
by 2/4; SwinIR works in ``window_size`` windows) are exported with the padding inside the graph:
reflect-pad bottom/right by ``k - 1``, crop to the next multiple of ``k``, crop the output back. That
is the padding :mod:`perceptsr.inference` and SwinIR's own ``check_image_size`` apply (reflection of
the first rows does not depend on how far one reflects), so such graphs take any ``H, W >= k``
(reflection needs the pad to be shorter than the side). SwinIR's padding is Python control flow,
which a traced graph would freeze at the trace size; done this way it stays dynamic.

**Exporter.** torch's TorchScript-based exporter (``dynamo=False``): it records the shape
arithmetic, so H and W stay dynamic for every architecture here, and needs only ``onnx``. The
torch.export-based exporter (torch's default since 2.9) needs ``onnxscript``, took about 7x longer
on these networks and fails on SwinIR (its per-size attention-mask cache is keyed by sizes, which
become unhashable symbols).

**Verification.** The written graph is run by onnxruntime (CPU) on a random batch of 2 at a size
that is not a multiple of ``k`` and on a crop of a bundled photo (scikit-image's ``astronaut``),
against the float32 PyTorch network; the maximum absolute difference must stay within
:data:`FP32_TOLERANCE` (1e-4), or :data:`FP16_TOLERANCE` (1e-2, about 2.5 grey levels of 8 bits,
for fp16 graphs: float16 keeps about 3 significant digits and errors grow with depth), else
:class:`~perceptsr.errors.ExportError` is raised and the output file is left as it was.
"""

from __future__ import annotations

import copy
import dataclasses
import io
import math
import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from perceptsr import __version__
from perceptsr.checkpoint.atomic import atomic_write
from perceptsr.checkpoint.legacy import first_line
from perceptsr.errors import ConfigError, ExportError
from perceptsr.inference import input_multiple, model_in_channels

__all__ = ["DEFAULT_OPSET", "FP16_TOLERANCE", "FP32_TOLERANCE", "ExportCheck", "ExportReport", "export_onnx",
           "export_multiple"]

DEFAULT_OPSET = 17
FP32_TOLERANCE = 1e-4
FP16_TOLERANCE = 1e-2
INPUT_NAME, OUTPUT_NAME = "input", "output"


@dataclasses.dataclass(frozen=True)
class ExportCheck:
    """One verification run: what was fed (``label``, input ``shape``) and the max abs difference."""

    label: str
    shape: tuple[int, ...]
    max_abs_diff: float


@dataclasses.dataclass
class ExportReport:
    """What :func:`export_onnx` wrote and measured."""

    path: Path
    opset: int
    fp16: bool
    scale: int
    multiple: int
    tolerance: float
    checks: list[ExportCheck]

    @property
    def max_abs_diff(self) -> float:
        return max(c.max_abs_diff for c in self.checks)


class _PadToMultiple(nn.Module):
    """``net`` with reflect padding to a multiple of ``k`` and the output cropped back (see module doc)."""

    def __init__(self, net: nn.Module, k: int, scale: int) -> None:
        super().__init__()
        self.net, self.k, self.scale = net, k, scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        k = self.k
        x = F.pad(x, (0, k - 1, 0, k - 1), mode="reflect")
        x = x[..., : (h + k - 1) // k * k, : (w + k - 1) // k * k]
        return self.net(x)[..., : h * self.scale, : w * self.scale]


def export_multiple(model: nn.Module) -> int:
    """The side multiple the exported graph pads to: the architecture's input rule, or the window
    size of networks that pad to their windows themselves (SwinIR)."""
    own = getattr(model, "window_size", 1) if callable(getattr(model, "pad_to_window", None)) else 1
    return max(input_multiple(model), int(own))


def _require_runtime():
    try:
        import onnx
        import onnxruntime
    except ImportError as exc:
        raise ConfigError(f"ONNX export needs the onnx and onnxruntime packages ({exc}): "
                          "pip install onnx onnxruntime (or perceptsr[test])") from None
    return onnx, onnxruntime


def _image_crop(channels: int, height: int, width: int) -> np.ndarray:
    """A ``height x width`` crop of scikit-image's bundled ``astronaut`` photo, float32 HWC in [0, 1],
    grey for one channel, RGB channels repeated for more than three."""
    from skimage import data as skdata

    img = np.asarray(skdata.astronaut())[..., :3].astype(np.float32) / 255.0
    img = img[200 - height // 2: 200 + height - height // 2, 250 - width // 2: 250 + width - width // 2]
    if channels == 1:
        return img.mean(axis=2, keepdims=True)
    return np.concatenate([img] * math.ceil(channels / 3), axis=2)[..., :channels]


def _inputs(channels: int, k: int) -> list[tuple[str, torch.Tensor]]:
    """The verification inputs: random (batch 2) and a photo crop, both at sizes not a multiple of ``k``."""
    h, w = 2 * k + 23, 2 * k + 17
    noise = torch.rand(2, channels, h, w, generator=torch.Generator().manual_seed(0))
    crop = _image_crop(channels, 2 * k + 41, 2 * k + 49)
    photo = torch.from_numpy(np.ascontiguousarray(crop.transpose(2, 0, 1)))[None]
    return [("random input", noise), ("astronaut crop", photo)]


def _verify(path: Path, name: Path, reference: nn.Module, inputs, fp16: bool, tolerance: float, onnx,
            ort) -> list[ExportCheck]:
    """Run the graph at ``path`` (to be written as ``name``) on ``inputs`` against ``reference``."""
    try:
        onnx.checker.check_model(str(path))
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnx and onnxruntime raise their own types
        raise ExportError(f"{name}: the exported graph does not load: {first_line(exc)}") from None
    checks = []
    for label, x in inputs:
        with torch.no_grad():
            want = reference(x).numpy()
        feed = x.numpy().astype(np.float16 if fp16 else np.float32)
        try:
            got = session.run([OUTPUT_NAME], {INPUT_NAME: feed})[0]
        except Exception as exc:
            raise ExportError(f"{name}: onnxruntime fails on the {label} {tuple(x.shape)}: {first_line(exc)}; "
                              "the file was not written") from None
        if got.shape != want.shape:
            raise ExportError(f"{name}: the ONNX graph gives shape {got.shape} on the {label} {tuple(x.shape)}, "
                              f"PyTorch {want.shape}")
        checks.append(ExportCheck(label, tuple(x.shape), float(np.abs(got.astype(np.float32) - want).max())))
    bad = [c for c in checks if not c.max_abs_diff <= tolerance]
    if bad:
        listed = "; ".join(f"{c.label} {c.shape}: {c.max_abs_diff:.3g}" for c in bad)
        raise ExportError(f"{name}: ONNX output differs from PyTorch by more than {tolerance:g} "
                          f"({'fp16' if fp16 else 'fp32'}): {listed}; the file was not written")
    return checks


def export_onnx(
    model: nn.Module | str | os.PathLike,
    out: str | os.PathLike,
    *,
    fp16: bool = False,
    opset: int = DEFAULT_OPSET,
) -> ExportReport:
    """Export a generator (a module or a checkpoint path) to ONNX at ``out``, verified (module doc).

    The file is written atomically, and only once the verification passed.
    """
    onnx, ort = _require_runtime()
    if not isinstance(opset, int) or opset < DEFAULT_OPSET:
        raise ConfigError(f"ONNX opset must be an integer >= {DEFAULT_OPSET}, got {opset!r}")
    source = None
    if not isinstance(model, nn.Module):
        from perceptsr.checkpoint import load_model

        source = str(model)
        model = load_model(model)
    meta = getattr(model, "perceptsr_meta", None) or {}
    net = copy.deepcopy(model).float().cpu().eval()
    channels, k = model_in_channels(model), export_multiple(model)
    side = max(16, 4 * k)
    trace = torch.rand(1, channels, side, side, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        scale = net(trace).shape[-2] // trace.shape[-2]
    reference = _PadToMultiple(net, k, scale).eval() if k > 1 else net
    graph = copy.deepcopy(reference).half() if fp16 else reference
    out = Path(out)
    buf = io.BytesIO()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notes
            torch.onnx.export(
                graph, (trace.half() if fp16 else trace,), buf, dynamo=False, opset_version=opset,
                input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: {0: "batch", 2: "height", 3: "width"},
                              OUTPUT_NAME: {0: "batch", 2: "out_height", 3: "out_width"}},
            )
    except Exception as exc:  # the exporter raises many types; name the model and the first line
        what = source or type(model).__name__
        raise ExportError(f"{what}: ONNX export failed: {first_line(exc)}") from exc
    proto = onnx.load_from_string(buf.getvalue())
    props = {"arch": str(meta.get("arch") or type(model).__name__), "scale": str(scale),
             "input_multiple": str(k), "dtype": "float16" if fp16 else "float32",
             "perceptsr_version": __version__, **({"source": Path(source).name} if source else {})}
    for key, value in props.items():
        proto.metadata_props.add(key=key, value=value)
    proto.producer_name = "perceptsr"
    blob = proto.SerializeToString()
    tolerance = FP16_TOLERANCE if fp16 else FP32_TOLERANCE
    checks: list[ExportCheck] = []

    def verify(tmp: Path) -> None:
        checks.extend(_verify(tmp, out, reference, _inputs(channels, k), fp16, tolerance, onnx, ort))

    atomic_write(out, lambda f: f.write(blob), check=verify)
    return ExportReport(out, opset, fp16, scale, k, tolerance, checks)
