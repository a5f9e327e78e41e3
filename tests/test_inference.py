"""Tiled/batched inference: parity with whole-image forwards, auto tiling, images, files, CLI."""

from __future__ import annotations

import argparse
import warnings

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from perceptsr.archs import build_arch
from perceptsr.data.imresize import imresize
from perceptsr.inference import (
    CPU_AUTO_TILE,
    AutoTile,
    _axis_plan,
    auto_tile_size,
    upscale_image,
    upscale_tensor,
)


class Nearest(nn.Module):
    """Nearest-neighbour upsampling: expected outputs are known exactly. Records input shapes."""

    def __init__(self, scale: int = 2, channels: int = 3):
        super().__init__()
        self.scale, self.channels = scale, channels
        self.perceptsr_meta = {"scale": scale}
        self.seen: list[tuple[int, ...]] = []

    def forward(self, x):
        assert x.shape[1] == self.channels, f"model got {x.shape[1]} channels"
        self.seen.append(tuple(x.shape))
        return F.interpolate(x, scale_factor=self.scale, mode="nearest")


def _small_generator(kind: str) -> nn.Module:
    torch.manual_seed(0)
    if kind == "msrresnet":  # receptive field radius 2 * 2 + 3 = 7 LR pixels
        return build_arch("msrresnet", num_feat=16, num_block=2, upscale=4).eval()
    return build_arch("srresnet", nf=16, nb=2, upscale=4).eval()  # radius 2 * 2 + 4 = 8 LR pixels


# ----------------------------------------------------------------- tile layout


@pytest.mark.parametrize("length", [1, 5, 37, 64, 100, 257])
@pytest.mark.parametrize("tile", [1, 8, 33, 64])
@pytest.mark.parametrize("pad", [0, 3, 10])
def test_axis_plan_covers_axis_with_context(length, tile, pad):
    window, plan = _axis_plan(length, tile, pad)
    covered = []
    for start, end, wstart in plan:
        assert 0 <= wstart <= start < end <= wstart + window <= length
        assert end - start <= tile or len(plan) == 1
        assert start - wstart >= pad or wstart == 0  # context, or the real border
        assert wstart + window - end >= pad or wstart + window == length
        covered.extend(range(start, end))
    assert covered == list(range(length))


# ----------------------------------------------------------------- tiled == untiled


@pytest.mark.parametrize("kind", ["msrresnet", "srresnet"])
@pytest.mark.parametrize(
    "size,tile,batch",
    [
        ((37, 50), 16, 1),  # non-divisible sizes, several tiles a side
        ((37, 50), 13, 4),  # odd tile, last batch partly filled
        ((40, 24), 8, 3),  # many small tiles
        ((20, 23), 64, 2),  # image smaller than a tile
        ((6, 45), 16, 4),  # thinner than the context along one axis
    ],
)
def test_tiled_equals_untiled_with_enough_pad(kind, size, tile, batch):
    model = _small_generator(kind)
    x = torch.rand((2, 3, *size), generator=torch.Generator().manual_seed(1))
    whole = upscale_tensor(model, x, scale=4)
    tiled = upscale_tensor(model, x, scale=4, tile=tile, tile_pad=10, batch_size=batch)
    assert tiled.shape == whole.shape == (2, 3, size[0] * 4, size[1] * 4)
    assert (tiled - whole).abs().max().item() < 1e-4


def test_small_pad_gives_seams():
    # With no context, pixels near a tile edge see the conv zero padding instead of their
    # neighbours (the receptive field here is 7 LR pixels), so the tiled result must differ,
    # and the difference must sit at the tile edges.
    model = _small_generator("msrresnet")
    x = torch.rand((1, 3, 32, 32), generator=torch.Generator().manual_seed(2))
    whole = upscale_tensor(model, x, scale=4)
    seams = upscale_tensor(model, x, scale=4, tile=16, tile_pad=0)
    diff = (seams - whole).abs()[0].amax(0)
    assert diff.max().item() > 1e-3
    # tiles are 16 LR = 64 HR pixels: the seam is at HR row/col 64; far from it nothing changes
    assert diff[56:72].max() == diff.max() or diff[:, 56:72].max() == diff.max()
    assert diff[:16, :16].max().item() < 1e-4


def test_rrdbnet_x2_odd_size_tiles_match():
    # RRDBNet x2 pixel-unshuffles by 2: odd sizes are padded and tiles are laid out on the 2x2 grid
    torch.manual_seed(0)
    model = build_arch("rrdbnet", num_feat=8, num_block=1, num_grow_ch=4, scale=2).eval()
    x = torch.rand((1, 3, 99, 45), generator=torch.Generator().manual_seed(3))
    whole = upscale_tensor(model, x, scale=2)
    tiled = upscale_tensor(model, x, scale=2, tile=16, tile_pad=40, batch_size=2)
    assert whole.shape == (1, 3, 198, 90)
    assert (tiled - whole).abs().max().item() < 1e-4


def test_single_image_chw_and_clamp_and_scale_from_meta():
    model = Nearest(scale=3)
    x = torch.linspace(-0.5, 1.5, 3 * 5 * 7).reshape(3, 5, 7)
    out = upscale_tensor(model, x, tile=4, tile_pad=1)
    assert out.shape == (3, 15, 21)
    expected = x.clamp(0, 1).repeat_interleave(3, 1).repeat_interleave(3, 2)
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


def test_batches_hold_equal_sized_tiles():
    model = Nearest()
    x = torch.rand(1, 3, 30, 41)
    upscale_tensor(model, x, scale=2, tile=16, tile_pad=2, batch_size=4)
    assert len({shape[1:] for shape in model.seen}) == 1
    assert sum(shape[0] for shape in model.seen) == 2 * 3  # 2 rows x 3 columns of tiles


def test_bf16_autocast_runs_close():
    model = _small_generator("msrresnet")
    x = torch.rand(1, 3, 24, 24)
    ref = upscale_tensor(model, x, scale=4)
    out = upscale_tensor(model, x, scale=4, tile=12, tile_pad=8, dtype=torch.bfloat16)
    assert out.dtype == torch.float32
    assert (out - ref).abs().mean().item() < 0.02


def test_bad_options_are_rejected():
    model = Nearest()
    x = torch.rand(1, 3, 8, 8)
    for kwargs in ({"tile": 0}, {"tile": "big"}, {"tile_pad": -1}, {"batch_size": 0}):
        with pytest.raises(ValueError):
            upscale_tensor(model, x, scale=2, **kwargs)
    with pytest.raises(ValueError, match="float tensor"):
        upscale_tensor(model, torch.zeros(1, 3, 8, 8, dtype=torch.uint8), scale=2)
    with pytest.raises(ValueError, match="expected"):  # wrong scale for the model
        upscale_tensor(model, x, scale=4)


# ----------------------------------------------------------------- auto tile / OOM


class FakeOOM(Nearest):
    """Raises a CUDA-style out-of-memory error when a batch has more than ``limit`` pixels."""

    def __init__(self, limit: int, error=None):
        super().__init__(scale=2)
        self.limit = limit
        self.error = error or torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (fake)")

    def forward(self, x):
        if x.shape[0] * x.shape[2] * x.shape[3] > self.limit:
            raise self.error
        return super().forward(x)


def test_auto_tile_cpu_default():
    assert auto_tile_size(Nearest(), device="cpu") == CPU_AUTO_TILE


def test_auto_tile_halves_on_oom_and_remembers():
    x = torch.rand(1, 3, 100, 90)
    model = FakeOOM(limit=(32 + 2 * 4) ** 2)  # one 32-pixel tile with its context fits
    state = AutoTile(size=128)
    with pytest.warns(RuntimeWarning, match="out of memory"):
        out = upscale_tensor(model, x, scale=2, tile=state, tile_pad=4, batch_size=1)
    assert state.size == 32  # 128 -> 64 -> 32
    torch.testing.assert_close(out, x.repeat_interleave(2, 2).repeat_interleave(2, 3), rtol=0, atol=0)
    model.seen.clear()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the smaller size is kept: no further OOM
        upscale_tensor(model, x, scale=2, tile=state, tile_pad=4, batch_size=1)


def test_auto_string_on_cpu_uses_default_tile():
    model = Nearest()
    x = torch.rand(1, 3, 300, 20)
    upscale_tensor(model, x, scale=2, tile="auto", tile_pad=0, batch_size=1)
    assert max(shape[2] for shape in model.seen) <= CPU_AUTO_TILE


def test_oom_gives_up_at_min_size_and_other_errors_pass():
    x = torch.rand(1, 3, 40, 40)
    state = AutoTile(size=64, min_size=16)
    with pytest.raises(torch.OutOfMemoryError), pytest.warns(RuntimeWarning, match="out of memory"):
        upscale_tensor(FakeOOM(limit=1), x, scale=2, tile=state, tile_pad=0)
    assert state.size == 16
    with pytest.raises(ValueError, match="not memory"):
        upscale_tensor(FakeOOM(limit=1, error=ValueError("not memory")), x, scale=2, tile="auto")
    with pytest.raises(torch.OutOfMemoryError):  # an explicit tile is never changed behind the user's back
        upscale_tensor(FakeOOM(limit=1), x, scale=2, tile=16)


# ----------------------------------------------------------------- numpy images


def _expected_nearest(img: np.ndarray, scale: int = 2) -> np.ndarray:
    return img.repeat(scale, 0).repeat(scale, 1)


def test_upscale_image_gray_uint8_keeps_layout():
    img = np.random.default_rng(0).integers(0, 256, (9, 7), dtype=np.uint8)
    out = upscale_image(Nearest(), img, tile=4, tile_pad=1)
    assert out.dtype == np.uint8 and out.shape == (18, 14)
    np.testing.assert_array_equal(out, _expected_nearest(img))


def test_upscale_image_rgba_uint16_alpha_bicubic():
    rng = np.random.default_rng(1)
    img = rng.integers(0, 65536, (10, 12, 4), dtype=np.uint16)
    out = upscale_image(Nearest(), img)
    assert out.dtype == np.uint16 and out.shape == (20, 24, 4)
    np.testing.assert_array_equal(out[..., :3], _expected_nearest(img[..., :3]))
    alpha = np.clip(imresize(img[..., 3].astype(np.float32) / 65535, 2), 0, 1)
    np.testing.assert_array_equal(out[..., 3], np.rint(alpha * 65535).astype(np.uint16))


def test_upscale_image_gray_alpha_float():
    rng = np.random.default_rng(2)
    img = rng.random((6, 5, 2), dtype=np.float32)
    out = upscale_image(Nearest(), img)
    assert out.dtype == np.float32 and out.shape == (12, 10, 2)
    np.testing.assert_allclose(out[..., 0], _expected_nearest(img[..., 0]), atol=1e-6)
    np.testing.assert_allclose(out[..., 1], np.clip(imresize(img[..., 1], 2), 0, 1), atol=1e-6)


def test_upscale_image_single_channel_model_gets_gray():
    model = Nearest(channels=1)
    model.perceptsr_meta["num_in_ch"] = 1
    img = np.random.default_rng(3).random((4, 4), dtype=np.float32)
    np.testing.assert_allclose(upscale_image(model, img), _expected_nearest(img), atol=1e-6)


def test_upscale_image_rejects_bad_input():
    with pytest.raises(ValueError, match="C in 1..4"):
        upscale_image(Nearest(), np.zeros((4, 4, 5), np.float32))
    with pytest.raises(ValueError, match="int32"):
        upscale_image(Nearest(), np.zeros((4, 4, 3), np.int32))


# ----------------------------------------------------------------- files and folders


def _u8(rng, shape):
    return rng.integers(0, 256, shape, dtype=np.uint8)


def test_upscale_path_alpha_round_trip(tmp_path):
    from perceptsr.data.io import read_image, read_image_info, write_image
    from perceptsr.inference import upscale_path

    rgba = _u8(np.random.default_rng(4), (9, 11, 4))
    src = write_image(tmp_path / "in" / "logo.png", rgba)
    summary = upscale_path(Nearest(), src, tmp_path / "out", suffix="_x2", tile=4, tile_pad=2, progress=False)
    out = tmp_path / "out" / "logo_x2.png"
    assert summary.ok and summary.processed == [(src, out)]
    info = read_image_info(out)
    assert (info.height, info.width, info.channels, info.bits) == (18, 22, 4, 8)
    got = np.rint(read_image(out, mode="keep", keep_alpha=True) * 255).astype(np.uint8)
    np.testing.assert_array_equal(got[..., :3], _expected_nearest(rgba[..., :3]))
    alpha = np.clip(imresize(rgba[..., 3].astype(np.float32) / np.float32(255), 2), 0, 1)
    np.testing.assert_array_equal(got[..., 3], np.floor(alpha.astype(np.float64) * 255 + 0.5).astype(np.uint8))


@pytest.mark.parametrize("shape", [(7, 6, 3), (7, 6, 1), (7, 6, 2)])
def test_upscale_path_16bit_stays_16bit(tmp_path, shape):
    from perceptsr.data.io import read_image, read_image_info, write_image
    from perceptsr.inference import upscale_path

    img = np.random.default_rng(5).integers(0, 65536, shape, dtype=np.uint16)
    img[..., -1] = 65535 if shape[-1] == 2 else img[..., -1]  # opaque alpha: bicubic keeps it exact
    src = write_image(tmp_path / "deep.png", img, bits=16)
    summary = upscale_path(Nearest(), src, tmp_path / "out", progress=False)
    out = tmp_path / "out" / "deep.png"
    assert summary.ok and out.is_file()
    info = read_image_info(out)
    assert (info.bits, info.channels, info.height, info.width) == (16, shape[-1], 14, 12)
    got = np.rint(read_image(out, mode="keep", keep_alpha=True) * 65535).astype(np.uint16)
    np.testing.assert_array_equal(got, _expected_nearest(img))


def test_corrupt_file_is_reported_and_the_rest_written(tmp_path, capsys):
    from perceptsr.data.io import write_image
    from perceptsr.inference import upscale_path

    rng = np.random.default_rng(6)
    folder = tmp_path / "in"
    write_image(folder / "a.png", _u8(rng, (5, 6, 3)))
    (folder / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"definitely not a png")
    write_image(folder / "c.bmp", _u8(rng, (4, 4, 3)))
    (folder / "notes.txt").write_text("not an image")  # not listed at all
    summary = upscale_path(Nearest(), folder, tmp_path / "out", progress=True)
    assert [p.name for p, _ in summary.processed] == ["a.png", "c.bmp"]
    assert [p.name for p, _ in summary.failed] == ["b.png"] and not summary.ok
    assert str(folder / "b.png") in summary.failed[0][1]
    assert "b.png" in capsys.readouterr().err  # reported as it happens, beside the bar
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.png", "c.png"]  # no temp files


def test_upscale_path_refuses_overwrite_and_collisions(tmp_path):
    from perceptsr.data.io import write_image
    from perceptsr.inference import upscale_path

    rng = np.random.default_rng(7)
    write_image(tmp_path / "a.jpg", _u8(rng, (4, 4, 3)))
    write_image(tmp_path / "a.png", _u8(rng, (4, 4, 3)))
    original = (tmp_path / "a.png").read_bytes()
    summary = upscale_path(Nearest(), tmp_path, tmp_path, progress=False)
    # a.jpg -> a.png would replace an input; then a.png -> a.png is the input itself
    assert summary.processed == [] and len(summary.failed) == 2
    assert all("overwrite" in reason for _, reason in summary.failed)
    assert (tmp_path / "a.png").read_bytes() == original
    summary = upscale_path(Nearest(), tmp_path, tmp_path / "out", progress=False)
    assert [p.name for p, _ in summary.processed] == ["a.jpg"]
    assert "already written" in summary.failed[0][1]


def test_upscale_path_missing_input_and_empty_folder(tmp_path):
    from perceptsr.errors import ImageReadError
    from perceptsr.inference import upscale_path

    with pytest.raises(ImageReadError, match="nothere"):
        upscale_path(Nearest(), tmp_path / "nothere", tmp_path / "out", progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ImageReadError, match="no images"):
        upscale_path(Nearest(), tmp_path / "empty", tmp_path / "out", progress=False)


# ----------------------------------------------------------------- command line


def _cli(argv: list[str]) -> int:
    """``perceptsr upscale ...`` through the dispatcher, or this module directly until it is registered."""
    from perceptsr.cli import COMMANDS, main

    if "upscale" in COMMANDS:
        return main(["upscale", *argv])
    from perceptsr.cli import upscale
    from perceptsr.errors import PerceptsrError

    parser = argparse.ArgumentParser(prog="perceptsr upscale")
    upscale.add_arguments(parser)
    try:
        return upscale.run(parser.parse_args(argv))
    except PerceptsrError as exc:  # as perceptsr.cli.main does
        print(f"perceptsr upscale: error: {exc}")
        return 1


def test_cli_upscale_folder(tmp_path, capsys):
    from perceptsr.checkpoint import save_model
    from perceptsr.data.io import read_image, write_image

    torch.manual_seed(0)
    model = build_arch("msrresnet", num_feat=8, num_block=1, upscale=2)
    ckpt = save_model(tmp_path / "g.safetensors", model, arch="msrresnet",
                      arch_kwargs={"num_feat": 8, "num_block": 1, "upscale": 2})
    rng = np.random.default_rng(8)
    folder = tmp_path / "lr"
    write_image(folder / "x.png", _u8(rng, (19, 13, 3)))
    write_image(folder / "y.png", _u8(rng, (8, 9, 3)))
    args = ["--model", str(ckpt), "--input", str(folder), "--output", str(tmp_path / "sr"),
            "--tile", "8", "--tile-pad", "8", "--batch", "2", "--device", "cpu", "--suffix", "_sr", "--quiet"]
    assert _cli(args) == 0
    sr = read_image(tmp_path / "sr" / "x_sr.png")
    assert sr.shape == (38, 26, 3)
    x = torch.from_numpy(read_image(folder / "x.png").transpose(2, 0, 1).copy())
    whole = upscale_tensor(model.eval(), x, scale=2).permute(1, 2, 0).numpy()
    np.testing.assert_allclose(sr, np.floor(whole.astype(np.float64) * 255 + 0.5) / 255, atol=1.5 / 255)

    (folder / "z.png").write_bytes(b"garbage")
    assert _cli(args + ["--tile", "auto"]) == 1
    assert "z.png" in capsys.readouterr().err
    assert _cli(["--model", str(ckpt), "--input", str(tmp_path / "missing"), "--output", str(tmp_path / "o"),
                 "--quiet"]) == 1


def test_out_of_memory_on_one_image_is_reported(tmp_path):
    from perceptsr.data.io import write_image
    from perceptsr.inference import upscale_path

    rng = np.random.default_rng(9)
    write_image(tmp_path / "in" / "big.png", _u8(rng, (40, 40, 3)))
    write_image(tmp_path / "in" / "small.png", _u8(rng, (8, 8, 3)))
    summary = upscale_path(FakeOOM(limit=20 * 20), tmp_path / "in", tmp_path / "out", progress=False)
    assert [p.name for p, _ in summary.processed] == ["small.png"]
    assert "big.png" in summary.failed[0][1] and "out of memory" in summary.failed[0][1]
