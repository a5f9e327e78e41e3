"""Image I/O: bit depths, channel layouts, EXIF orientation, strict errors, atomic writes, listing."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile, ImageOps

from perceptsr.data import list_images, read_image, read_image_info, rgb2gray, write_image
from perceptsr.errors import ImageReadError

RNG = np.random.default_rng(0)


def _u8(shape):
    return RNG.integers(0, 256, size=shape, dtype=np.uint8)


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _png16_with_filters(values: np.ndarray, orientation: int | None = None, kinds=(0, 1, 2, 3, 4)) -> bytes:
    """Independent PNG writer cycling through scanline filters ``kinds`` row by row, two IDAT chunks."""
    h, w, c = values.shape
    x = values.astype(">u2").view(np.uint8).reshape(h, w * c * 2).astype(np.int64)
    bpp = 2 * c
    left = np.zeros_like(x)
    left[:, bpp:] = x[:, :-bpp]
    up = np.zeros_like(x)
    up[1:] = x[:-1]
    ul = np.zeros_like(x)
    ul[1:, bpp:] = x[:-1, :-bpp]
    p = left + up - ul
    pa, pb, pc = abs(p - left), abs(p - up), abs(p - ul)
    paeth = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, up, ul))
    preds = [np.zeros_like(x), left, up, (left + up) // 2, paeth]
    kind = [kinds[r % len(kinds)] for r in range(h)]
    rows = [bytes([kind[r]]) + ((x[r] - preds[kind[r]][r]) % 256).astype(np.uint8).tobytes() for r in range(h)]
    data = zlib.compress(b"".join(rows))
    ctype = {1: 0, 2: 4, 3: 2, 4: 6}[c]
    out = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, ctype, 0, 0, 0))
    if orientation is not None:
        exif = Image.Exif()
        exif[0x0112] = orientation
        out += _chunk(b"eXIf", exif.tobytes())
    half = len(data) // 2
    return out + _chunk(b"IDAT", data[:half]) + _chunk(b"IDAT", data[half:]) + _chunk(b"IEND", b"")


def test_8bit_rgb_round_trip(tmp_path):
    img = _u8((6, 7, 3))
    path = write_image(tmp_path / "a.png", img.astype(np.float32) / 255)
    out = read_image(path)
    assert out.dtype == np.float32 and out.shape == (6, 7, 3)
    np.testing.assert_array_equal(np.round(out * 255), img)
    np.testing.assert_array_equal(np.asarray(Image.open(path)), img)


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_16bit_round_trip_all_layouts(tmp_path, channels):
    values = RNG.integers(0, 65536, size=(5, 9, channels), dtype=np.uint16)
    path = write_image(tmp_path / "x.png", values.astype(np.float64) / 65535, bits=16)
    out = read_image(path, mode="keep", keep_alpha=True)
    assert out.shape == (5, 9, channels)
    np.testing.assert_array_equal(np.round(out.astype(np.float64) * 65535), values)
    info = read_image_info(path)
    assert (info.bits, info.channels, info.has_alpha) == (16, channels, channels in (2, 4))


def test_16bit_gray_written_by_pillow(tmp_path):
    values = RNG.integers(0, 65536, size=(4, 6), dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "g.png")
    out = read_image(tmp_path / "g.png")
    assert out.shape == (4, 6, 3)
    np.testing.assert_allclose(out[..., 1], values / 65535, atol=1e-7)
    assert read_image_info(tmp_path / "g.png").bits == 16


@pytest.mark.parametrize("kinds", [(0, 1, 2, 3, 4), (4, 3), (1, 0, 2)])  # last: the row-by-row fast path
def test_16bit_png_filters(tmp_path, kinds):
    values = RNG.integers(0, 65536, size=(7, 5, 4), dtype=np.uint16)
    (tmp_path / "f.png").write_bytes(_png16_with_filters(values, kinds=kinds))
    out = read_image(tmp_path / "f.png", keep_alpha=True)
    np.testing.assert_array_equal(np.round(out * 65535.0), values)


def test_16bit_png_exif_orientation(tmp_path):
    values = RNG.integers(0, 65536, size=(7, 5, 3), dtype=np.uint16)
    (tmp_path / "r.png").write_bytes(_png16_with_filters(values, orientation=6))
    upright = np.rot90(values, -1)  # orientation 6: rotate 90 degrees clockwise to display
    np.testing.assert_array_equal(np.round(read_image(tmp_path / "r.png") * 65535.0), upright)
    info = read_image_info(tmp_path / "r.png")
    assert (info.height, info.width) == (5, 7)


def test_grey_palette_and_alpha(tmp_path):
    grey = _u8((4, 5))
    Image.fromarray(grey).save(tmp_path / "l.png")
    assert read_image(tmp_path / "l.png").shape == (4, 5, 3)
    assert read_image(tmp_path / "l.png", mode="keep").shape == (4, 5, 1)
    np.testing.assert_allclose(read_image(tmp_path / "l.png", mode="gray")[..., 0], grey / 255)

    la = _u8((4, 5, 2))
    Image.fromarray(la).save(tmp_path / "la.png")
    assert read_image(tmp_path / "la.png").shape == (4, 5, 3)
    kept = read_image(tmp_path / "la.png", keep_alpha=True)
    np.testing.assert_allclose(kept[..., 3], la[..., 1] / 255)
    np.testing.assert_allclose(kept[..., 0], la[..., 0] / 255)

    rgba = _u8((4, 5, 4))
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    np.testing.assert_allclose(read_image(tmp_path / "rgba.png"), rgba[..., :3] / 255)
    assert read_image(tmp_path / "rgba.png", keep_alpha=True).shape == (4, 5, 4)
    rgb = rgba[..., :3].astype(np.float32) / 255
    np.testing.assert_allclose(read_image(tmp_path / "rgba.png", mode="gray")[..., 0], rgb2gray(rgb), atol=1e-6)

    pal = Image.fromarray(_u8((4, 5, 3))).quantize(colors=8)
    pal.save(tmp_path / "p.png")
    np.testing.assert_allclose(read_image(tmp_path / "p.png"), np.asarray(pal.convert("RGB")) / 255)
    pal.save(tmp_path / "pt.png", transparency=0)
    info = read_image_info(tmp_path / "pt.png")
    assert info.has_alpha and info.channels == 4 and info.bits == 8
    alpha = read_image(tmp_path / "pt.png", keep_alpha=True)[..., 3]
    np.testing.assert_array_equal(alpha == 0, np.asarray(pal) == 0)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_jpeg(tmp_path, orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / "o.jpg"
    Image.fromarray(_u8((6, 10, 3))).save(path, exif=exif, quality=90)
    expected = np.asarray(ImageOps.exif_transpose(Image.open(path)), dtype=np.float32) / 255
    np.testing.assert_array_equal(read_image(path), expected)
    info = read_image_info(path)
    assert (info.height, info.width) == expected.shape[:2] and info.format == "JPEG"


def _good_png(tmp_path):
    return write_image(tmp_path / "good.png", RNG.random((64, 64, 3)))


@pytest.mark.parametrize("lenient", [False, True])
def test_truncated_files_raise_even_if_pillow_is_lenient(tmp_path, monkeypatch, lenient):
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", lenient)
    data = _good_png(tmp_path).read_bytes()
    cut = tmp_path / "cut.png"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match=r"cut\.png.*truncated"):
        read_image(cut)
    Image.fromarray(_u8((64, 64, 3))).save(tmp_path / "j.jpg")
    jpeg = (tmp_path / "j.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    with pytest.raises(ImageReadError, match=r"cut\.jpg.*truncated"):
        read_image(tmp_path / "cut.jpg")
    assert ImageFile.LOAD_TRUNCATED_IMAGES is lenient
    values = RNG.integers(0, 65536, size=(8, 8, 3), dtype=np.uint16)
    png16 = write_image(tmp_path / "s.png", values / 65535, bits=16).read_bytes()
    (tmp_path / "cut16.png").write_bytes(png16[:-30])
    with pytest.raises(ImageReadError, match=r"cut16\.png.*truncated"):
        read_image(tmp_path / "cut16.png")


def test_missing_garbage_and_corrupt(tmp_path):
    with pytest.raises(ImageReadError, match=r"nope\.png: file not found"):
        read_image(tmp_path / "nope.png")
    (tmp_path / "junk.png").write_bytes(b"this is not an image at all" * 10)
    with pytest.raises(ImageReadError, match=r"junk\.png: not an image in a format Pillow can decode"):
        read_image(tmp_path / "junk.png")
    with pytest.raises(ImageReadError, match=r"junk\.png"):
        read_image_info(tmp_path / "junk.png")
    data = bytearray(_good_png(tmp_path).read_bytes())
    idat = data.index(b"IDAT")
    data[idat + 10] ^= 0xFF
    (tmp_path / "flip.png").write_bytes(bytes(data))
    with pytest.raises(ImageReadError, match=r"flip\.png: corrupt PNG \(CRC mismatch"):
        read_image(tmp_path / "flip.png")
    with pytest.raises(ImageReadError, match="not a file"):
        read_image(tmp_path)
    with pytest.raises(ValueError, match="mode"):
        read_image(tmp_path / "good.png", mode="bgr")


def test_write_atomic_dirs_and_formats(tmp_path):
    target = tmp_path / "deep" / "er" / "out.png"
    write_image(target, np.zeros((3, 4)))
    write_image(target, np.ones((3, 4, 3)))  # replaces
    assert read_image(target).min() == 1.0
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.png"]  # no temp file left
    with pytest.raises(ValueError, match="shape"):
        write_image(tmp_path / "bad.png", np.zeros((3, 4, 5)))
    with pytest.raises(ValueError, match="16-bit"):
        write_image(tmp_path / "x.jpg", np.zeros((3, 4, 3)), bits=16)
    with pytest.raises(ValueError, match="alpha"):
        write_image(tmp_path / "x.jpg", np.zeros((3, 4, 4)))
    with pytest.raises(ValueError, match="extension"):
        write_image(tmp_path / "x.gif", np.zeros((3, 4, 3)))
    with pytest.raises(TypeError, match="uint16"):
        write_image(tmp_path / "x.png", np.zeros((3, 4, 3), np.uint16))
    assert not (tmp_path / "bad.png").exists() and not list(tmp_path.glob(".*tmp"))


def test_write_rounding_tensor_and_jpeg(tmp_path):
    img = np.array([[0.5 / 255, 2.5 / 255, 1.2, -0.3]])  # half away from zero, saturated
    write_image(tmp_path / "r.png", img)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "r.png")), [[1, 3, 255, 0]])
    t = torch.rand(1, 3, 5, 6)
    write_image(tmp_path / "t.png", t)
    np.testing.assert_allclose(read_image(tmp_path / "t.png"), t[0].permute(1, 2, 0).numpy(), atol=0.5 / 255 + 1e-6)
    write_image(tmp_path / "t.jpg", t[0])
    assert read_image(tmp_path / "t.jpg").shape == (5, 6, 3)
    u8 = _u8((3, 3, 3))
    write_image(tmp_path / "u.bmp", u8)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "u.bmp")), u8)


def test_list_images(tmp_path):
    for name in ["b.png", "a.JPG", "c.txt", ".hidden.png", "d.tiff", "e.webp"]:
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "f.png").write_bytes(b"")
    assert [p.name for p in list_images(tmp_path)] == ["a.JPG", "b.png", "d.tiff", "e.webp"]
    assert [p.name for p in list_images(tmp_path, recursive=True)][-1] == "f.png"
    with pytest.raises(ImageReadError, match="missing.*folder not found"):
        list_images(tmp_path / "missing")
    with pytest.raises(ImageReadError, match="not a folder"):
        list_images(tmp_path / "b.png")


def test_reads_benchmark_grey_files(benchmark_dir):
    bridge = benchmark_dir / "Set14" / "HR" / "bridge.png"
    img = read_image(bridge)
    assert img.shape == (512, 512, 3) and np.array_equal(img[..., 0], img[..., 2])
    assert read_image_info(bridge).channels == 1
