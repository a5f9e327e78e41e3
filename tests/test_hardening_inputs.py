"""Fault corpus, part 2: images, metrics and config values (issue 15).

Generated at test time and small on disk; every case fails on the code before the fix. The pixel
bombs are refused from their headers, so no test decodes (or allocates) a huge image.
"""

from __future__ import annotations

import os
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from perceptsr.config import TrainConfig, config_from_dict
from perceptsr.data.io import DEFAULT_MAX_PIXELS, list_images, read_image, write_image
from perceptsr.errors import ConfigError, ImageReadError


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png16(path: Path, width: int, height: int, channels: int = 3, rows: int | None = None) -> Path:
    """A 16-bit PNG whose header says ``width`` x ``height``; ``rows`` None = all rows of zeros, written
    through a streaming compressor (a few hundred bytes per megapixel on disk), else only that many."""
    ctype = {1: 0, 3: 2, 4: 6}[channels]
    comp = zlib.compressobj(9)
    row = b"\x00" * (1 + width * channels * 2)
    data = b"".join(comp.compress(row) for _ in range(height if rows is None else rows)) + comp.flush()
    header = struct.pack(">IIBBBBB", width, height, 16, ctype, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", data) + _chunk(b"IEND", b""))
    return path


# ---------------------------------------------------------------------------------------------
# 5. one pixel limit for every decoder path


def test_16bit_png_bomb_is_refused_from_its_header(tmp_path):
    # 14000 x 14000 x 16-bit RGB would decode to 4.4 GiB as float32; only 10 rows are stored
    path = png16(tmp_path / "bomb16.png", 14000, 14000, rows=10)
    assert path.stat().st_size < 10_000 and 14000 * 14000 > DEFAULT_MAX_PIXELS
    with pytest.raises(ImageReadError) as info:
        read_image(path)
    message = str(info.value)
    assert message.startswith(str(path)) and "14000x14000" in message and "pixel limit" in message
    assert "PERCEPTSR_MAX_IMAGE_PIXELS" in message


@pytest.mark.parametrize("kind", ["png16_rgb", "png16_grey", "png8", "tiff_float", "tiff16", "jpeg"])
def test_every_decoder_path_shares_the_configured_limit(tmp_path, monkeypatch, kind):
    w, h = 1100, 1000  # 1.1 Mpx: refused under a 1 Mpx limit, read without one
    if kind == "png16_rgb":
        path = png16(tmp_path / "a.png", w, h)
    elif kind == "png16_grey":
        path = png16(tmp_path / "a.png", w, h, channels=1)
    else:
        arr = np.zeros((h, w), np.float32)
        path = tmp_path / {"png8": "a.png", "tiff_float": "a.tif", "tiff16": "a.tiff", "jpeg": "a.jpg"}[kind]
        image = {"png8": lambda: Image.fromarray(arr.astype(np.uint8)), "tiff_float": lambda: Image.fromarray(arr),
                 "tiff16": lambda: Image.fromarray(arr.astype(np.uint16)),
                 "jpeg": lambda: Image.fromarray(arr.astype(np.uint8))}[kind]()
        image.save(path, **({"compression": "tiff_deflate"} if "tiff" in kind else {}))
    monkeypatch.setenv("PERCEPTSR_MAX_IMAGE_PIXELS", "1000000")
    with pytest.raises(ImageReadError, match=r"1100x1000 = 1,100,000 pixels exceeds the pixel limit of 1,000,000"):
        read_image(path)
    assert read_image(path, max_pixels=2_000_000).shape == (h, w, 3)  # the argument overrides the variable
    monkeypatch.setenv("PERCEPTSR_MAX_IMAGE_PIXELS", "none")
    assert read_image(path).shape == (h, w, 3)


# ---------------------------------------------------------------------------------------------
# 6. NaN images, lpips / dists on float64


def test_nan_float_tiff_is_refused_naming_the_file(tmp_path):
    arr = np.full((8, 8), 0.5, np.float32)
    arr[3, 4] = np.nan
    path = tmp_path / "nan.tif"
    Image.fromarray(arr).save(path)
    with pytest.raises(ImageReadError, match=r"nan\.tif: float image holds 1 NaN or Inf value"):
        read_image(path)


def test_nan_training_image_is_skipped_and_listed_with_skip_bad(tmp_path):
    from perceptsr.data.datasets import PairedImageDataset

    folder = tmp_path / "hr"
    for i in range(2):
        write_image(folder / f"ok{i}.png", np.random.default_rng(i).random((16, 16, 3)))
    arr = np.full((16, 16), 0.5, np.float32)
    arr[0, 0] = np.inf
    Image.fromarray(arr).save(folder / "bad.tif")
    with pytest.warns(UserWarning, match="bad.tif"):
        ds = PairedImageDataset(folder, scale=2, patch_size=8, skip_bad=True)
    assert len(ds) == 2 and [p.name for p, _ in ds.bad_files] == ["bad.tif"]
    assert "NaN or Inf" in ds.bad_files[0][1]


@pytest.mark.parametrize("name", ["lpips", "dists"])
def test_lpips_and_dists_accept_float64(name):
    from perceptsr.metrics import create_metric

    metric = create_metric(name, pretrained=False)
    x = torch.rand(1, 3, 48, 48, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    y = x.flip(-1)
    assert torch.allclose(metric(x, y), metric(x.float(), y.float()))


# ---------------------------------------------------------------------------------------------
# 7. metric DIR and skip_bad skip, name and count bad or too-small images


def test_metric_folder_skips_names_and_counts_bad_images(tmp_path, capsys, assets_dir):
    import csv

    from perceptsr.cli import main

    folder = tmp_path / "sr"
    rng = np.random.default_rng(0)
    for i in range(2):
        write_image(folder / f"good{i}.png", rng.random((96, 192, 3)))
    write_image(folder / "tiny.png", rng.random((8, 8, 3)))
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    out = tmp_path / "niqe.csv"
    assert main(["metric", "niqe", str(folder), "--out", str(out), "--quiet"]) == 0
    captured = capsys.readouterr()
    err = captured.err
    assert f"skipped (niqe): {folder / 'broken.png'}" in err and f"skipped (niqe): {folder / 'tiny.png'}: " in err
    assert "too small" in err and "measured niqe on 2 of 4" in err, err
    rows = list(csv.reader(out.open()))
    values = {Path(r[0]).name: r[2] for r in rows[1:] if r[0].endswith(".png")}
    assert values.keys() == {"good0.png", "good1.png", "tiny.png", "broken.png"}
    assert all(np.isfinite(float(values[f"good{i}.png"])) for i in range(2)) and values["tiny.png"] == "nan"
    mean = next(r for r in rows if r[0] == "mean")
    assert np.isclose(float(mean[2]), np.mean([float(values["good0.png"]), float(values["good1.png"])]))
    assert sum(r[0].startswith("# skipped") for r in rows) == 2


def test_metric_single_too_small_image_names_it(tmp_path, capsys):
    from perceptsr.cli import main

    path = write_image(tmp_path / "one_by_one.png", np.zeros((1, 1, 3)))
    ref = write_image(tmp_path / "ref.png", np.zeros((1, 1, 3)))
    assert main(["metric", "ssim", str(path), str(ref)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(path) in err and "too small" in err


def test_skip_bad_drops_images_smaller_than_the_patch_and_lists_them(tmp_path):
    from perceptsr.data.datasets import PairedImageDataset

    folder = tmp_path / "hr"
    for i in range(2):
        write_image(folder / f"ok{i}.png", np.random.default_rng(i).random((16, 16, 3)))
    write_image(folder / "one_by_one.png", np.zeros((1, 1, 3)))
    with pytest.raises(ConfigError, match="one_by_one.png: LR size 0x0 is smaller than the LR patch"):
        PairedImageDataset(folder, scale=2, patch_size=8)
    with pytest.warns(UserWarning, match="skipping too small image .*one_by_one.png"):
        ds = PairedImageDataset(folder, scale=2, patch_size=8, skip_bad=True)
    assert len(ds) == 2 and [p.name for p, _ in ds.bad_files] == ["one_by_one.png"]


# ---------------------------------------------------------------------------------------------
# 8. config values


def _cfg(**changes) -> TrainConfig:
    raw = {"name": "run", "model": {"arch": "msrresnet"}, "data": {"train": {"hr_dir": "x"}},
           "train": {"iterations": 1}}
    for dotted, value in changes.items():
        node = raw
        *parents, last = dotted.split("__")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return config_from_dict(TrainConfig, raw)


@pytest.mark.parametrize("key, value, named", [
    ("optim__lr", float("inf"), "optim.lr"),
    ("optim__eps", float("inf"), "optim.eps"),
    ("data__val", {"hr_dir": "v", "max_images": -1}, "data.val.max_images"),
    ("data__val", {"hr_dir": "v", "max_images": 0}, "data.val.max_images"),
    ("name", "..", "name"),
    ("name", ".", "name"),
    ("name", "..\\up", "name"),
    ("train__grad_clip", float("inf"), "train.grad_clip"),
])
def test_bad_config_values_are_refused_naming_the_key(key, value, named):
    with pytest.raises(ConfigError, match=rf"config key '{named}'"):
        _cfg(**{key: value})


def test_good_config_values_still_load():
    assert _cfg(optim__lr=1e-4, name="run-2.b").optim.lr == 1e-4
    assert _cfg(data__val={"hr_dir": "v", "max_images": 3}).data.val.max_images == 3


# ---------------------------------------------------------------------------------------------
# 9. output modes, folder listing, upscale failure reports


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


@pytest.mark.parametrize("bits, suffix", [(8, ".png"), (16, ".png"), (8, ".jpg")])
def test_written_images_follow_the_umask(tmp_path, umask_022, bits, suffix):
    path = write_image(tmp_path / f"a{suffix}", np.zeros((4, 4, 3)), bits=bits)
    assert path.stat().st_mode & 0o777 == 0o644


def test_symlink_loops_and_unsupported_files_are_reported(tmp_path):
    folder = tmp_path / "imgs"
    write_image(folder / "ok.png", np.zeros((4, 4, 3)))
    Image.new("P", (4, 4)).save(folder / "anim.gif")
    (folder / "loop_a.png").symlink_to(folder / "loop_b.png")
    (folder / "loop_b.png").symlink_to(folder / "loop_a.png")
    (folder / "README.txt").write_text("not an image, not reported")
    with pytest.warns(UserWarning) as caught:
        found = list_images(folder)
    assert [p.name for p in found] == ["ok.png"]
    message = " ".join(str(w.message) for w in caught)
    assert "anim.gif (unsupported format .gif" in message
    assert "loop_a.png (broken symlink or symlink loop)" in message and "loop_b.png" in message
    assert "README" not in message


def test_upscale_reports_each_failure_once(tmp_path, capsys):
    from perceptsr.archs import build_arch
    from perceptsr.checkpoint import save_model
    from perceptsr.cli import main

    model = tmp_path / "g.safetensors"
    save_model(model, build_arch("srresnet", nf=4, nb=1, upscale=2), arch="srresnet",
               arch_kwargs={"nf": 4, "nb": 1, "upscale": 2})
    folder = tmp_path / "in"
    write_image(folder / "good.png", np.zeros((6, 6, 3)))
    (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(["upscale", "--model", str(model), "--input", str(folder), "--output", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert err.count(str(folder / "corrupt.png")) == 1
    assert "1 image(s) failed" in err and (tmp_path / "out" / "good.png").is_file()
