"""Image files: strict reading to float32 HWC [0, 1], atomic 8/16-bit writing, sorted folder listing.

Pillow does the decoding, except for 16-bit colour PNGs, which it would silently reduce to 8 bits:
those go through a small PNG codec here. Every failure a user can cause (missing, corrupt or
truncated file, NaN/Inf in a float image) raises :class:`~perceptsr.errors.ImageReadError` naming
the file and the reason.

**Pixel limit.** Every decoder path (8-bit, 16-bit PNG, TIFF, float) refuses an image of more than
:func:`max_image_pixels` pixels from its header, before any pixel is decoded, so a small file that
would decode to gigabytes (a "decompression bomb") cannot exhaust memory. The limit is
:data:`DEFAULT_MAX_PIXELS` (2**27, about 11585 x 11585: 1.5 GiB as float32 RGB); set the
environment variable ``PERCEPTSR_MAX_IMAGE_PIXELS`` (a number, or ``none`` for no limit) or pass
``max_pixels=`` to :func:`read_image`. Pillow's own hard stop (``PIL.Image.MAX_IMAGE_PIXELS`` x 2,
179 M pixels by default) still applies above that; raise both for larger images.
"""

from __future__ import annotations

import io
import os
import re
import struct
import tempfile
import threading
import warnings
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFile, UnidentifiedImageError

from perceptsr.data.color import rgb2gray
from perceptsr.errors import ImageReadError
from perceptsr.umask import umask_mode

__all__ = [
    "DEFAULT_MAX_PIXELS", "IMAGE_EXTENSIONS", "ImageInfo", "max_image_pixels", "read_image", "read_image_info",
    "write_image", "list_images",
]

DEFAULT_MAX_PIXELS = 2**27
MAX_PIXELS_ENV = "PERCEPTSR_MAX_IMAGE_PIXELS"

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
_PIL_FORMATS = {
    ".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".bmp": "BMP", ".tif": "TIFF", ".tiff": "TIFF",
    ".webp": "WEBP", ".ppm": "PPM", ".pgm": "PPM",
}  # fmt: skip
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG16_CHANNELS = {0: 1, 2: 3, 4: 2, 6: 4}  # PNG colour type -> samples per pixel
_ORIENT = {
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),
    8: lambda a: np.rot90(a, 1),
}  # EXIF orientation -> transform giving the upright image (as PIL.ImageOps.exif_transpose)
_TRUNCATION_LOCK = threading.Lock()
# image formats people keep in image folders that perceptsr does not read: reported, not skipped silently
_UNSUPPORTED_EXTENSIONS = (".gif", ".heic", ".heif", ".avif", ".jxl", ".svg", ".exr", ".dng", ".raw", ".cr2", ".nef")


def max_image_pixels(max_pixels: int | None = None) -> int | None:
    """The pixel limit in force: ``max_pixels`` if given (0 or less = none), else the environment
    variable ``PERCEPTSR_MAX_IMAGE_PIXELS`` (a number, or ``none``), else :data:`DEFAULT_MAX_PIXELS`."""
    if max_pixels is not None:
        return int(max_pixels) if max_pixels > 0 else None
    raw = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_PIXELS
    if raw.lower() in ("none", "off", "0"):
        return None
    try:
        return int(float(raw))
    except ValueError:
        raise ImageReadError(f"environment variable {MAX_PIXELS_ENV}={raw!r} is not a number (or 'none')") from None


def _check_pixels(path: Path, width: int, height: int, limit: int | None) -> None:
    if limit is not None and width * height > limit:
        raise ImageReadError(
            f"{path}: {width}x{height} = {width * height:,} pixels exceeds the pixel limit of {limit:,} "
            f"(a decompression bomb?); raise it with {MAX_PIXELS_ENV}=N or read_image(max_pixels=N) if the image is genuine"
        )


@dataclass(frozen=True)
class ImageInfo:
    """What a file stores, to write results back alike: size (upright), channels, sample bits, alpha."""

    path: Path
    format: str
    height: int
    width: int
    channels: int
    bits: int
    has_alpha: bool


# ----------------------------------------------------------------------------- 16-bit PNG codec


def _png_chunks(data: memoryview, path: Path):
    """Yield (type, payload) of each PNG chunk, checking critical CRCs and that IEND is reached."""
    pos = len(_PNG_SIGNATURE)
    while True:
        if pos + 8 > len(data):
            raise ImageReadError(f"{path}: truncated PNG (no IEND chunk)")
        length, ctype = struct.unpack(">I4s", data[pos : pos + 8])
        payload = data[pos + 8 : pos + 8 + length]
        crc = data[pos + 8 + length : pos + 12 + length]
        if len(crc) < 4:
            raise ImageReadError(f"{path}: truncated PNG (chunk {ctype!r} cut short)")
        critical = ctype[:1].isupper()  # like libpng, a bad CRC only matters in critical chunks
        if critical and zlib.crc32(payload, zlib.crc32(ctype)) != struct.unpack(">I", crc)[0]:
            raise ImageReadError(f"{path}: corrupt PNG (CRC mismatch in chunk {ctype!r})")
        yield ctype, payload
        if ctype == b"IEND":
            return
        pos += 12 + length


def _png_header(data: bytes) -> tuple[int, int, int, int, int] | None:
    """(width, height, bit depth, colour type, interlace) from a PNG's IHDR, or None if not a PNG."""
    if len(data) < 29 or data[:8] != _PNG_SIGNATURE or data[12:16] != b"IHDR":
        return None
    width, height, depth, ctype, _, _, interlace = struct.unpack(">IIBBBBB", data[16:29])
    return width, height, depth, ctype, interlace


def _unfilter(rows: np.ndarray, bpp: int) -> np.ndarray:
    """Undo PNG scanline filters. ``rows`` is ``(H, 1 + W * bpp)`` uint8; returns ``(H, W, bpp)`` uint8."""
    height = rows.shape[0]
    kinds = rows[:, 0]
    filtered = rows[:, 1:].reshape(height, -1, bpp)
    if kinds.max() <= 2:  # None/Sub/Up only (our own files): one vectorised pass per row
        out = np.empty_like(filtered)
        prev = np.zeros_like(filtered[0])
        for r in range(height):
            row = filtered[r]
            if kinds[r] == 1:
                row = np.add.accumulate(row, axis=0, dtype=np.uint8)  # wraps modulo 256, as PNG does
            elif kinds[r] == 2:
                row = row + prev
            out[r] = prev = row
        return out
    return _unfilter_wavefront(kinds, filtered)


def _unfilter_wavefront(kinds: np.ndarray, filtered: np.ndarray) -> np.ndarray:
    """Average and Paeth make a byte depend on its left, upper and upper-left neighbours, so sweep
    anti-diagonals: all pixels ``(r, k - r)`` of diagonal ``k`` are reconstructed at once."""
    height, width, bpp = filtered.shape
    kinds = kinds.astype(np.int16)[:, None]
    flat = filtered.reshape(-1, bpp).astype(np.int16)  # pixel (r, i) at r * width + i
    out = np.empty_like(flat)
    prev1 = np.zeros((height + 1, bpp), np.int16)  # diagonal k-1: slot r+1 holds pixel (r, k-1-r), slot 0 row -1
    prev2 = np.zeros_like(prev1)  # diagonal k-2
    for k in range(height + width - 1):
        r0, r1 = max(0, k - width + 1), min(height, k + 1)
        a, b, c = prev1[r0 + 1 : r1 + 1], prev1[r0:r1], prev2[r0:r1]  # left, up, up-left
        pa, pb, pc = np.abs(b - c), np.abs(a - c), np.abs(a + b - 2 * c)
        paeth = np.where((pa <= pb) & (pa <= pc), a, np.where(pb <= pc, b, c))
        kind = kinds[r0:r1]
        pred = np.select([kind == 1, kind == 2, kind == 3, kind == 4], [a, b, (a + b) >> 1, paeth], 0)
        idx = np.arange(r0, r1) * (width - 1) + k
        cur = np.zeros_like(prev1)
        cur[r0 + 1 : r1 + 1] = (flat[idx] + pred) & 255
        out[idx] = cur[r0 + 1 : r1 + 1]
        prev2, prev1 = prev1, cur
    return out.reshape(height, width, bpp).astype(np.uint8)


def _read_png16(data: bytes, path: Path) -> tuple[np.ndarray, int]:
    """Decode a non-interlaced 16-bit PNG to float32 HWC [0, 1]; also return its EXIF orientation."""
    width, height, _, ctype, interlace = _png_header(data)
    if interlace:
        raise ImageReadError(f"{path}: interlaced 16-bit colour PNG is not supported; re-save it non-interlaced")
    channels = _PNG16_CHANNELS[ctype]
    idat, exif = [], Image.Exif()
    for kind, payload in _png_chunks(data, path):
        if kind == b"IDAT":
            idat.append(payload)
        elif kind == b"eXIf":
            exif.load(bytes(payload))
    try:
        raw = zlib.decompress(b"".join(idat))
    except zlib.error as exc:
        raise ImageReadError(f"{path}: corrupt PNG image data ({exc})") from exc
    stride = 1 + width * channels * 2
    if len(raw) != height * stride:
        raise ImageReadError(f"{path}: truncated PNG image data ({len(raw)} of {height * stride} bytes)")
    rows = np.frombuffer(raw, np.uint8).reshape(height, stride)
    if rows[:, 0].max() > 4:
        raise ImageReadError(f"{path}: corrupt PNG (unknown scanline filter {rows[:, 0].max()})")
    pixels = _unfilter(rows, channels * 2).reshape(height, width * channels * 2)
    values = pixels.view(">u2").reshape(height, width, channels)
    return (values / 65535).astype(np.float32), exif.get(0x0112, 1)


def _encode_png16(img: np.ndarray) -> bytes:
    """A 16-bit PNG of a uint16 ``(H, W, C)`` array, C in 1..4, every row "Up"-filtered."""
    height, width, channels = img.shape
    ctype = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    rows = img.astype(">u2").view(np.uint8).reshape(height, width * channels * 2)
    up = np.diff(rows, axis=0, prepend=np.zeros((1, rows.shape[1]), np.uint8))  # wraps modulo 256
    raw = np.concatenate([np.full((height, 1), 2, np.uint8), up], axis=1).tobytes()

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = struct.pack(">IIBBBBB", width, height, 16, ctype, 0, 0, 0)
    return _PNG_SIGNATURE + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b"")


# ----------------------------------------------------------------------------- reading


@contextmanager
def _refuse_truncated():
    """Make Pillow raise on truncated data even if some library set ``LOAD_TRUNCATED_IMAGES``."""
    if not ImageFile.LOAD_TRUNCATED_IMAGES:
        yield
        return
    with _TRUNCATION_LOCK:
        ImageFile.LOAD_TRUNCATED_IMAGES = False
        try:
            yield
        finally:
            ImageFile.LOAD_TRUNCATED_IMAGES = True


def _pillow_pixels(im: Image.Image) -> np.ndarray:
    """Pixels of a loaded Pillow image as float32 HWC [0, 1] with 1 to 4 channels (L, LA, RGB, RGBA)."""
    if im.mode in ("I", "F") or im.mode.startswith("I;16"):
        arr = np.asarray(im, dtype=np.float32)
        return (arr if im.mode == "F" else arr / 65535)[..., None]
    has_alpha = im.mode in ("LA", "La", "PA", "RGBA", "RGBa") or "transparency" in im.info
    grey = im.mode in ("1", "L", "LA", "La")
    target = ("LA" if has_alpha else "L") if grey else ("RGBA" if has_alpha else "RGB")
    if im.mode != target:
        im = im.convert(target)
    arr = np.asarray(im, dtype=np.float32) / 255
    return arr[..., None] if arr.ndim == 2 else arr


def _open_pillow(data, path: Path, limit: int | None) -> Image.Image:
    """``Image.open`` (header only) with the pixel limit checked; Pillow's own bomb stop reported alike."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our limit decides
            im = Image.open(data)
    except Image.DecompressionBombError as exc:
        size = re.search(r"\((\d+) pixels\)", str(exc))
        what = f"{int(size.group(1)):,} pixels" if size else "the image size"
        raise ImageReadError(
            f"{path}: {what} exceeds Pillow's limit (2 x PIL.Image.MAX_IMAGE_PIXELS, a decompression bomb?); "
            f"raise PIL.Image.MAX_IMAGE_PIXELS as well as {MAX_PIXELS_ENV} if the image is genuine"
        ) from None
    _check_pixels(path, im.size[0], im.size[1], limit)
    return im


def _decode(path: Path, max_pixels: int | None = None) -> np.ndarray:
    """Upright float32 HWC [0, 1] pixels with the file's own channels (L, LA, RGB or RGBA)."""
    if not path.is_file():
        raise ImageReadError(f"{path}: file not found" if not path.exists() else f"{path}: not a file")
    limit = max_image_pixels(max_pixels)
    try:
        data = memoryview(path.read_bytes())
        header = _png_header(data)
        if header is not None:
            _check_pixels(path, header[0], header[1], limit)
        if header is not None and header[2] == 16 and header[3] != 0:
            arr, orientation = _read_png16(data, path)
        else:
            if header is not None:
                for _ in _png_chunks(data, path):  # CRCs and IEND: Pillow only checks what it decodes
                    pass
            with _open_pillow(io.BytesIO(data), path, limit) as im, _refuse_truncated():
                im.load()
                orientation = im.getexif().get(0x0112, 1)
                arr = _pillow_pixels(im)
                floating = im.mode == "F"
            if floating and not np.isfinite(arr).all():
                bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
                raise ImageReadError(f"{path}: float image holds {bad} NaN or Inf value(s)")
    except ImageReadError:
        raise
    except UnidentifiedImageError:
        raise ImageReadError(f"{path}: not an image in a format Pillow can decode") from None
    except MemoryError:
        raise ImageReadError(f"{path}: not enough memory to decode this image") from None
    except Exception as exc:  # Pillow reports bad files with many exception types
        raise ImageReadError(f"{path}: cannot read image ({type(exc).__name__}: {exc})") from exc
    transform = _ORIENT.get(orientation)
    return np.ascontiguousarray(transform(arr)) if transform else arr


def read_image(path, *, mode: str = "rgb", keep_alpha: bool = False, max_pixels: int | None = None) -> np.ndarray:
    """Read an image file as float32 ``(H, W, C)`` in [0, 1], upright (EXIF orientation applied).

    ``mode="rgb"`` gives 3 channels (grey is repeated), ``"gray"`` 1 channel (colour goes through
    MATLAB's ``rgb2gray``), ``"keep"`` the file's own channel count. Alpha is dropped unless
    ``keep_alpha``, which appends it as the last channel when the file has one. 16-bit files keep
    their 16-bit precision (colour-key transparency of 16-bit colour PNGs is ignored).
    ``max_pixels`` overrides the pixel limit (see the module docstring; 0 = none).
    """
    if mode not in ("rgb", "gray", "keep"):
        raise ValueError(f"read_image: mode must be 'rgb', 'gray' or 'keep', got {mode!r}")
    path = Path(path)
    arr = _decode(path, max_pixels)
    alpha = arr[..., -1:] if arr.shape[-1] in (2, 4) else None
    color = arr[..., :-1] if alpha is not None else arr
    if mode == "rgb" and color.shape[-1] == 1:
        color = np.repeat(color, 3, axis=-1)
    elif mode == "gray" and color.shape[-1] == 3:
        color = rgb2gray(color)[..., None]
    if keep_alpha and alpha is not None:
        return np.concatenate([color, alpha], axis=-1)
    return np.ascontiguousarray(color)


def _header_orientation(im: Image.Image) -> int:
    """EXIF orientation without decoding pixels (a PNG's ``getexif()`` would load the whole image)."""
    if im.format != "PNG":
        return im.getexif().get(0x0112, 1)
    exif = Image.Exif()
    if "exif" in im.info:  # an eXIf chunk before the image data, where the PNG spec puts it
        exif.load(im.info["exif"])
    return exif.get(0x0112, 1)


def read_image_info(path) -> ImageInfo:
    """Format, upright size, channel count, bits per sample (8, 16 or 32) and alpha of an image file."""
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(f"{path}: file not found" if not path.exists() else f"{path}: not a file")
    try:
        with path.open("rb") as fh:
            header = _png_header(fh.read(29))
        with Image.open(path) as im:
            mode, fmt, (width, height) = im.mode, im.format, im.size
            orientation = _header_orientation(im)
            transparency = "transparency" in im.info
    except Exception as exc:
        raise ImageReadError(f"{path}: cannot read image ({type(exc).__name__}: {exc})") from exc
    if header is not None and header[2] == 16:
        bits, channels = 16, _PNG16_CHANNELS[header[3]]
    else:
        bits = 32 if mode == "F" else 16 if mode == "I" or mode.startswith("I;16") else 8
        grey = mode in ("1", "L", "LA", "La", "I", "F") or mode.startswith("I;16")
        channels = (1 if grey else 3) + int(mode in ("LA", "La", "PA", "RGBA", "RGBa") or transparency)
    if orientation in (5, 6, 7, 8):
        width, height = height, width
    return ImageInfo(path, fmt, height, width, channels, bits, channels in (2, 4))


# ----------------------------------------------------------------------------- writing


def write_image(path, img, *, bits: int = 8, quality: int = 95) -> Path:
    """Write ``img`` atomically (temp file + rename, parent folders created); returns the path.

    ``img`` is float ``(H, W)`` / ``(H, W, C)`` in [0, 1] (rounded like MATLAB's ``im2uint8``),
    uint8 / uint16 matching ``bits``, or a tensor ``(C, H, W)`` / ``(1, C, H, W)``. C is 1 (grey),
    2 (grey + alpha), 3 (RGB) or 4 (RGBA). ``bits=16`` needs a ``.png``; ``quality`` is for JPEG/WebP.
    """
    path = Path(path)
    fmt = _PIL_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"write_image: unknown image extension {path.suffix!r} in {path}")
    if bits not in (8, 16):
        raise ValueError(f"write_image: bits must be 8 or 16, got {bits!r}")
    if bits == 16 and fmt != "PNG":
        raise ValueError(f"write_image: 16-bit output needs a .png file, got {path}")
    arr = _as_hwc_integers(img, bits)
    if fmt == "JPEG" and arr.shape[-1] in (2, 4):
        raise ValueError(f"write_image: JPEG cannot store alpha ({path}); drop the alpha channel or use .png")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            if bits == 16:
                fh.write(_encode_png16(arr))
            else:
                pil = Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr)
                pil.save(fh, format=fmt, **({"quality": quality} if fmt in ("JPEG", "WEBP") else {}))
        os.chmod(tmp, umask_mode())  # mkstemp makes it 0o600
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _as_hwc_integers(img, bits: int) -> np.ndarray:
    """``img`` as a uint8/uint16 ``(H, W, C)`` array, floats rounded half away from zero and saturated."""
    if isinstance(img, torch.Tensor):  # (C, H, W) or (1, C, H, W)
        tensor = img.detach().cpu()
        if tensor.ndim == 4 and tensor.shape[0] == 1:
            tensor = tensor[0]
        if tensor.ndim != 3:
            raise ValueError(f"write_image: expected a tensor (C, H, W) or (1, C, H, W), got {tuple(img.shape)}")
        img = tensor.permute(1, 2, 0).numpy()
    arr = np.asarray(img)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[-1] not in (1, 2, 3, 4):
        raise ValueError(f"write_image: expected (H, W) or (H, W, C) with C in 1..4, got shape {arr.shape}")
    dtype = np.uint8 if bits == 8 else np.uint16
    if np.issubdtype(arr.dtype, np.floating):
        top = 255 if bits == 8 else 65535
        return np.clip(np.floor(arr.astype(np.float64) * top + 0.5), 0, top).astype(dtype)
    if arr.dtype != dtype:
        raise TypeError(f"write_image: {arr.dtype} data cannot be written with bits={bits}; pass floats in [0, 1]")
    return arr


# ----------------------------------------------------------------------------- folders


def list_images(folder, *, recursive: bool = False) -> list[Path]:
    """Image files in ``folder`` (known extensions, any case; hidden files skipped), sorted by path.

    Image-like entries that cannot be read are not dropped silently: broken symlinks and symlink
    loops with an image extension, and files in formats perceptsr does not read (``.gif``,
    ``.heic``, ...), are named in one warning.
    """
    folder = Path(folder)
    if not folder.is_dir():
        reason = "not a folder" if folder.exists() else "folder not found"
        raise ImageReadError(f"{folder}: {reason}")
    candidates = folder.rglob("*") if recursive else folder.iterdir()
    found, ignored = [], []
    for p in candidates:
        suffix = p.suffix.lower()
        if p.name.startswith("."):
            continue
        if suffix in IMAGE_EXTENSIONS:
            if p.is_file():
                found.append(p)
            elif p.is_symlink():
                ignored.append(f"{p.name} (broken symlink or symlink loop)")
        elif suffix in _UNSUPPORTED_EXTENSIONS:
            ignored.append(f"{p.name} (unsupported format {suffix}; convert it to PNG)")
    if ignored:
        warnings.warn(f"{folder}: ignoring {len(ignored)} file(s): {', '.join(sorted(ignored))}", stacklevel=2)
    return sorted(found)
