"""Checkpoints: the native format, legacy ``.pth`` reading, key-layout conversion, architecture
detection, strict loading and an atomic :class:`CheckpointSaver` with retention.

Native format
    One ``.safetensors`` file. Tensors are the plain ``state_dict`` keys; the header metadata key
    ``"perceptsr"`` holds JSON: ``format_version``, ``arch``, ``arch_kwargs``, ``scale``, ``ema``,
    ``iteration``, ``metrics``, ``perceptsr_version``, ``created``, ``extra`` and ``raw_prefix``.
    A file may carry *both* weight sets of a training run: the EMA weights (what inference wants)
    are the plain keys, so any safetensors reader sees them first, and the raw (non-EMA) training
    weights are stored under the prefix ``"__params__."`` (``raw_prefix``). ``load_model(...,
    prefer_ema=False)`` picks the raw ones. In BasicSR terms: plain keys = ``params_ema``,
    prefixed keys = ``params``.

Legacy files
    Read with ``torch.load(weights_only=True)`` only, never unpickling code. Wrappers
    (``params_ema``/``params``, ``state_dict``, ``model_state_dict``, ``model``, ...) are unwrapped,
    ``module.``/``_orig_mod.`` prefixes stripped, and old layouts (old BasicSR SRResNet, old ESRGAN
    RRDB, mmsr RRDBNet/MSRResNet, old Ranker/discriminator ``features.N``) renamed to ours.

Training state
    :func:`save_training_state`/:func:`load_training_state`: ``torch.save`` written atomically and
    read back with ``weights_only=True``; NumPy arrays/scalars (e.g. NumPy's RNG state) are encoded
    so they round-trip too.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import json
import os
import pickle
import re
import shutil
import tempfile
import warnings
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import IO, Any

import torch
from torch import nn

from perceptsr.errors import CheckpointError

__all__ = [
    "FORMAT_VERSION", "META_KEY", "RAW_PREFIX", "LoadedCheckpoint", "CheckpointSaver",
    "save_model", "read_checkpoint", "read_state_dict", "strip_prefixes", "convert_state_dict", "detect_arch", "load_model",
    "load_pretrained", "load_state_dict_strict", "save_training_state", "load_training_state", "capture_rng_state",
    "restore_rng_state", "atomic_write",
]

FORMAT_VERSION = 1
META_KEY = "perceptsr"
RAW_PREFIX = "__params__."
# wrapper keys holding a state dict, tried in this order after params_ema/params
_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net_g", "generator", "net", "network", "params_g")
_MAX_LISTED = 8


# --------------------------------------------------------------------------------------------
# atomic writes


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(
    path: str | os.PathLike, write: Callable[[IO[bytes]], None], *, check: Callable[[Path], None] | None = None
) -> Path:
    """Write ``path`` via ``write(fileobj)`` into a temp file in the same folder, then ``os.replace``.

    ``check(tmp_path)`` may validate the written file before it replaces ``path``. On any error
    the temp file is removed and an existing ``path`` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if check is not None:
            check(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(path.parent)
    return path


# --------------------------------------------------------------------------------------------
# native format: writing


def _version() -> str:
    try:
        from perceptsr import __version__

        return __version__
    except ImportError:  # pragma: no cover
        return "unknown"


def _unwrap(module: nn.Module) -> nn.Module:
    """The user's module inside DataParallel/DDP and torch.compile wrappers."""
    while True:
        if isinstance(module, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            module = module.module
        elif isinstance(getattr(module, "_orig_mod", None), nn.Module):
            module = module._orig_mod
        else:
            return module


def _tensors_of(obj: nn.Module | Mapping[str, Any], what: str) -> dict[str, torch.Tensor]:
    sd = _unwrap(obj).state_dict() if isinstance(obj, nn.Module) else obj
    if not isinstance(sd, Mapping):
        raise CheckpointError(f"{what}: expected an nn.Module or a state dict, got {type(obj).__name__}")
    sd = strip_prefixes(sd)
    out: dict[str, torch.Tensor] = {}
    seen: set[tuple[int, int]] = set()
    for key, value in sd.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{what}: state dict entry {key!r} is a {type(value).__name__}, not a tensor")
        t = value.detach().to("cpu").contiguous()
        ident = t.untyped_storage().data_ptr() if t.numel() else id(t)
        if ident in seen:  # safetensors refuses tensors sharing memory (tied weights, views)
            t = t.clone()
        seen.add(t.untyped_storage().data_ptr() if t.numel() else id(t))
        out[key] = t
    return out


def _scale_of(model: Any, arch_kwargs: Mapping[str, Any]) -> int | None:
    for value in (getattr(model, "scale", None), arch_kwargs.get("upscale"), arch_kwargs.get("scale")):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def save_model(
    path: str | os.PathLike,
    model_or_state_dict: nn.Module | Mapping[str, torch.Tensor],
    *,
    arch: str,
    arch_kwargs: Mapping[str, Any] | None = None,
    ema_model: nn.Module | Mapping[str, torch.Tensor] | None = None,
    is_ema: bool = False,
    scale: int | None = None,
    iteration: int | None = None,
    metrics: Mapping[str, float] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write a native ``.safetensors`` checkpoint atomically and return its path.

    ``arch``/``arch_kwargs`` must rebuild the module with :func:`perceptsr.archs.build_arch`.
    With ``ema_model`` the file holds both sets: EMA weights as the plain keys and
    ``model_or_state_dict`` (the raw training weights) under :data:`RAW_PREFIX`. ``is_ema=True``
    marks a single set as EMA weights. ``scale`` defaults to the model's ``scale`` attribute or
    ``arch_kwargs["upscale"|"scale"]``.
    """
    from safetensors.torch import save as st_save

    path = Path(path)
    if not isinstance(arch, str) or not arch:
        raise CheckpointError(f"{path}: arch must be a non-empty string naming a registered architecture, got {arch!r}")
    arch_kwargs = dict(arch_kwargs or {})
    tensors = _tensors_of(model_or_state_dict, str(path))
    raw_prefix = None
    if ema_model is not None:
        raw = tensors
        tensors = _tensors_of(ema_model, f"{path} (ema_model)")
        if set(raw) != set(tensors):
            diff = sorted(set(raw) ^ set(tensors))
            raise CheckpointError(f"{path}: EMA and raw weights have different keys, e.g. {_listing(diff)}")
        raw_prefix = RAW_PREFIX
        tensors.update({raw_prefix + k: v for k, v in raw.items()})
        is_ema = True
    meta = {
        "format_version": FORMAT_VERSION,
        "arch": arch,
        "arch_kwargs": arch_kwargs,
        "scale": scale if scale is not None else _scale_of(model_or_state_dict, arch_kwargs),
        "ema": bool(is_ema),
        "raw_prefix": raw_prefix,
        "iteration": iteration,
        "metrics": dict(metrics or {}),
        "perceptsr_version": _version(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "extra": dict(extra or {}),
    }
    try:
        meta_json = json.dumps(meta, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: metadata must be JSON-serialisable (arch_kwargs, metrics, extra): {exc}") from exc
    blob = st_save(tensors, metadata={META_KEY: meta_json, "format": "pt"})
    return atomic_write(path, lambda f: f.write(blob))


# --------------------------------------------------------------------------------------------
# reading


@dataclasses.dataclass
class LoadedCheckpoint:
    """What :func:`read_checkpoint` found in a file.

    ``state_dict`` is unwrapped and prefix-stripped but still in the file's key layout (see
    :func:`convert_state_dict`); ``weights_key`` names the wrapper it came from (``"params_ema"``,
    ``"params"``, ``"state_dict"``, ... or ``""`` for a plain state dict); ``available`` lists all
    weight sets found; ``meta`` is the native metadata (``{}`` for foreign files).
    """

    path: Path
    file_format: str  # "perceptsr", "safetensors" or "torch"
    state_dict: dict[str, torch.Tensor]
    weights_key: str
    available: list[str]
    ema: bool
    meta: dict[str, Any]


def _is_safetensors(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) < 9:
        return False
    n = int.from_bytes(head[:8], "little")
    return head[8:9] == b"{" and 2 <= n <= path.stat().st_size - 8


def _is_state_dict(obj: Any) -> bool:
    return (
        isinstance(obj, Mapping) and len(obj) > 0
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    )


def _weight_sets(obj: Any, depth: int = 0) -> dict[str, dict[str, torch.Tensor]]:
    """Candidate state dicts inside a loaded object, keyed by the wrapper path."""
    if _is_state_dict(obj):
        return {"": dict(obj)}
    if not isinstance(obj, Mapping) or depth > 2:
        return {}
    found = {k: dict(obj[k]) for k in ("params_ema", "params") if _is_state_dict(obj.get(k))}
    if found:
        return found
    for k in _WRAPPER_KEYS:
        if k in obj:
            inner = _weight_sets(obj[k], depth + 1)
            if inner:
                return {(f"{k}/{n}" if n else k): sd for n, sd in inner.items()}
    return {}


def _unsafe_globals_message(path: Path, exc: Exception) -> str:
    names = re.findall(r"GLOBAL ([\w.]+)", str(exc))
    with contextlib.suppress(Exception):
        names = torch.serialization.get_unsafe_globals_in_checkpoint(str(path)) or names
    listed = ", ".join(sorted(set(names))) if names else "unknown objects"
    return (
        f"{path}: refusing to load: the file pickles Python objects ({listed}) that would have to be imported "
        "and executed to read it. perceptsr reads checkpoints with torch.load(weights_only=True) and never "
        "unpickles code. If you trust the file, re-save only its tensors in a separate Python session, e.g. "
        "torch.save(obj['params'], 'weights.pth') or torch.save(model.state_dict(), 'weights.pth'), "
        "and convert that."
    )


def _torch_load(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if re.search(r"GLOBAL [\w.]+", str(exc)):
            raise CheckpointError(_unsafe_globals_message(path, exc)) from None
        raise CheckpointError(f"{path}: not a readable PyTorch or safetensors checkpoint ({_first_line(exc)})") from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise CheckpointError(
            f"{path}: not a readable PyTorch or safetensors checkpoint (corrupt or truncated?): {_first_line(exc)}"
        ) from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:300]


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            header = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # safetensors raises its own SafetensorError
        raise CheckpointError(f"{path}: corrupt safetensors file: {_first_line(exc)}") from None
    return tensors, header


def _choose(sets: dict[str, dict], prefer_ema: bool, key: str | None, path: Path) -> str:
    if key is not None:
        matches = [n for n in sets if n == key or n.split("/")[-1] == key]
        if not matches:
            raise CheckpointError(f"{path}: no weights under {key!r}; available: {', '.join(map(repr, sets)) or 'none'}")
        return matches[0]
    order = ("params_ema", "params") if prefer_ema else ("params", "params_ema")
    for want in order:
        for n in sets:
            if n.split("/")[-1] == want:
                return n
    return next(iter(sets))


def read_checkpoint(path: str | os.PathLike, *, prefer_ema: bool = True, key: str | None = None) -> LoadedCheckpoint:
    """Read any supported checkpoint file (format found from its bytes, not its extension).

    Picks ``params_ema`` over ``params`` when ``prefer_ema`` (the reverse otherwise); ``key``
    selects a weight set explicitly (e.g. ``"params"``). Prefixes ``module.`` and ``_orig_mod.``
    are stripped; key layouts are *not* converted (see :func:`convert_state_dict`).
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if path.is_dir():
        raise CheckpointError(f"{path}: is a directory, expected a checkpoint file (.safetensors/.pth)")
    meta: dict[str, Any] = {}
    if _is_safetensors(path):
        tensors, header = _read_safetensors(path)
        if META_KEY in header:
            try:
                meta = json.loads(header[META_KEY])
            except json.JSONDecodeError as exc:
                raise CheckpointError(f"{path}: corrupt perceptsr metadata: {exc}") from None
            file_format = "perceptsr"
            raw_prefix = meta.get("raw_prefix")
            main = {k: v for k, v in tensors.items() if not (raw_prefix and k.startswith(raw_prefix))}
            sets = {"params_ema" if meta.get("ema") else "params": main}
            if raw_prefix:
                sets["params"] = {k[len(raw_prefix):]: v for k, v in tensors.items() if k.startswith(raw_prefix)}
        else:
            file_format = "safetensors"
            sets = {"": tensors}
    else:
        file_format = "torch"
        obj = _torch_load(path)
        sets = _weight_sets(obj)
        if not sets:
            top = list(obj)[:20] if isinstance(obj, Mapping) else type(obj).__name__
            raise CheckpointError(
                f"{path}: no state dict found (looked for a plain dict of tensors or under params_ema, params, "
                f"{', '.join(_WRAPPER_KEYS)}); top-level content: {top}"
            )
    chosen = _choose(sets, prefer_ema, key, path)
    leaf = chosen.split("/")[-1]
    ema = leaf == "params_ema" or (file_format == "perceptsr" and bool(meta.get("ema")) and leaf != "params")
    return LoadedCheckpoint(path, file_format, strip_prefixes(sets[chosen]), chosen, list(sets), ema, meta)


def strip_prefixes(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop leading ``module.`` (DataParallel/DDP) and any ``_orig_mod.`` (torch.compile) segments."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        new = key
        while new.startswith("module."):
            new = new[len("module."):]
        if "_orig_mod" in new:
            new = ".".join(p for p in new.split(".") if p != "_orig_mod")
        if new in out:
            raise CheckpointError(f"key {key!r} collides with another key after stripping prefixes ({new!r})")
        out[new] = value
    return out


def read_state_dict(
    path: str | os.PathLike, *, prefer_ema: bool = True, key: str | None = None, convert: bool = True
) -> dict[str, torch.Tensor]:
    """The file's weights, unwrapped and prefix-stripped; with ``convert`` legacy layouts are
    renamed to perceptsr key names (:func:`convert_state_dict`)."""
    ckpt = read_checkpoint(path, prefer_ema=prefer_ema, key=key)
    return _convert_or_raise(ckpt.state_dict, ckpt.path)[0] if convert else ckpt.state_dict


# --------------------------------------------------------------------------------------------
# legacy key layouts


def _indices(keys: Iterable[str], pattern: str) -> list[int]:
    rx = re.compile(pattern)
    return sorted({int(m.group(1)) for k in keys if (m := rx.match(k))})


def _rename(sd: Mapping[str, torch.Tensor], mapping: Mapping[str, str], layout: str) -> dict[str, torch.Tensor]:
    """Rename by module prefix: ``mapping[old_module] = new_module``; every key must be covered."""
    out: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        module, _, leaf = key.rpartition(".")
        if module not in mapping:
            raise CheckpointError(f"key {key!r} does not fit the {layout} layout")
        out[f"{mapping[module]}.{leaf}"] = value
    return out


def _convert_old_srresnet(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # B.sequential(conv, ShortcutBlock(sequential(res blocks..., LR conv)), *upsampler, HR conv + ReLU, last conv)
    keys = list(sd)
    blocks = _indices(keys, r"model\.1\.sub\.(\d+)\.res\.0\.weight$")
    lr = _indices(keys, r"model\.1\.sub\.(\d+)\.weight$")
    top = [i for i in _indices(keys, r"model\.(\d+)\.weight$") if i >= 2]
    if len(lr) != 1 or len(top) not in (3, 4) or blocks != list(range(len(blocks))) or lr[0] != len(blocks):
        raise CheckpointError("old BasicSR SRResNet layout: unexpected module indices "
                              f"(residual blocks {blocks[:3]}..., LR conv {lr}, top-level convs {top})")
    nf = sd["model.0.weight"].shape[0]
    ups = top[:-2]
    if any(sd[f"model.{i}.weight"].shape[0] == nf for i in ups):
        raise CheckpointError(
            "old BasicSR SRResNet with nearest-neighbour 'upconv' upsampling: perceptsr's SRResNet is the "
            "pixel-shuffle variant (RankSRGAN, SRResNet_bicx4_in3nf64nb16.pth) and cannot hold these weights"
        )
    mapping = {"model.0": "conv_first", f"model.1.sub.{lr[0]}": "LRconv",
               f"model.{top[-2]}": "HRconv", f"model.{top[-1]}": "conv_last"}
    for n, i in enumerate(ups, 1):
        mapping[f"model.{i}"] = f"upconv{n}"
    for b in blocks:
        mapping[f"model.1.sub.{b}.res.0"] = f"recon_trunk.{b}.conv1"
        mapping[f"model.1.sub.{b}.res.2"] = f"recon_trunk.{b}.conv2"
    return _rename(sd, mapping, "old BasicSR SRResNet")


def _convert_old_rrdb(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # model.0, model.1.sub.{i}.RDB{k}.conv{j}.0, model.1.sub.{nb} (LR conv), upconvs, HR conv, last conv
    keys = list(sd)
    blocks = _indices(keys, r"model\.1\.sub\.(\d+)\.RDB1\.conv1\.0\.weight$")
    lr = _indices(keys, r"model\.1\.sub\.(\d+)\.weight$")
    top = [i for i in _indices(keys, r"model\.(\d+)\.weight$") if i >= 2]
    if len(lr) != 1 or blocks != list(range(len(blocks))) or lr[0] != len(blocks):
        raise CheckpointError(f"old ESRGAN RRDB layout: unexpected module indices (blocks {blocks[:3]}..., LR conv {lr})")
    if len(top) != 4:
        raise CheckpointError(
            f"old ESRGAN RRDB layout with {len(top) - 2} upsampling convs: only x4 models (two nearest-neighbour "
            "upsampling convs) map onto BasicSR's RRDBNet"
        )
    mapping = {"model.0": "conv_first", f"model.1.sub.{lr[0]}": "conv_body", f"model.{top[0]}": "conv_up1",
               f"model.{top[1]}": "conv_up2", f"model.{top[2]}": "conv_hr", f"model.{top[3]}": "conv_last"}
    for b in blocks:
        for k in (1, 2, 3):
            for j in range(1, 6):
                mapping[f"model.1.sub.{b}.RDB{k}.conv{j}.0"] = f"body.{b}.rdb{k}.conv{j}"
    return _rename(sd, mapping, "old ESRGAN RRDB")


def _convert_mmsr_rrdb(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    fixed = {"conv_first": "conv_first", "trunk_conv": "conv_body", "upconv1": "conv_up1", "upconv2": "conv_up2",
             "HRconv": "conv_hr", "conv_last": "conv_last"}
    rx = re.compile(r"RRDB_trunk\.(\d+)\.RDB([123])\.conv([1-5])$")
    mapping = dict(fixed)
    for key in sd:
        module = key.rpartition(".")[0]
        if m := rx.match(module):
            mapping[module] = f"body.{m.group(1)}.rdb{m.group(2)}.conv{m.group(3)}"
    return _rename(sd, mapping, "mmsr RRDBNet")


def _convert_mmsr_msrresnet(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    mapping = {n: n for n in ("conv_first", "upconv1", "upconv2", "conv_last")}
    mapping["HRconv"] = "conv_hr"
    for b in _indices(sd, r"recon_trunk\.(\d+)\."):
        for c in ("conv1", "conv2"):
            mapping[f"recon_trunk.{b}.{c}"] = f"body.{b}.{c}"
    return _rename(sd, mapping, "mmsr MSRResNet")


def _convert_old_vgg(sd: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], str]:
    # features.N: conv / BN / LeakyReLU flattened; conv k (0-based) is conv{k//2}_{k%2}
    mapping: dict[str, str] = {}
    conv_count = 0
    last_conv = None
    last_channels = 0
    for i in _indices(sd, r"features\.(\d+)\.weight$"):
        w = sd[f"features.{i}.weight"]
        if w.ndim == 4:
            last_conv = f"{conv_count // 2}_{conv_count % 2}"
            mapping[f"features.{i}"] = f"conv{last_conv}"
            conv_count += 1
            last_channels = w.shape[0]
        elif w.ndim == 1 and f"features.{i}.running_mean" in sd and last_conv is not None:
            mapping[f"features.{i}"] = f"bn{last_conv}"
        else:
            raise CheckpointError(f"old VGG layout: cannot place features.{i}.weight with shape {list(w.shape)}")
    is_ranker = sd["classifier.0.weight"].shape[1] == last_channels
    if is_ranker:
        mapping.update({"classifier.0": "classifier.0", "classifier.2": "classifier.2"})
    else:
        mapping.update({"classifier.0": "linear1", "classifier.2": "linear2"})
    out = _rename(sd, mapping, "old VGG (features.N)")
    for key in list(out):  # PyTorch < 0.4.1 saved no BN counters
        if key.endswith(".running_mean"):
            counter = key[: -len("running_mean")] + "num_batches_tracked"
            out.setdefault(counter, torch.tensor(0, dtype=torch.long))
    return out, "old-vgg-ranker" if is_ranker else "old-vgg-discriminator"


def convert_state_dict(state_dict: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], str]:
    """Rename a legacy key layout to perceptsr names; returns ``(state_dict, layout)``.

    Layouts: ``"perceptsr"`` (already ours: RankSRGAN/mmsr SRResNet, BasicSR MSRResNet/RRDBNet/
    VGGStyleDiscriminator, mmsr Ranker; returned unchanged), ``"old-basicsr-srresnet"``,
    ``"old-esrgan-rrdb"``, ``"mmsr-rrdbnet"``, ``"mmsr-msrresnet"``, ``"old-vgg-ranker"`` and
    ``"old-vgg-discriminator"``. Raises CheckpointError (without a file name) when a layout is
    recognised but does not fit.
    """
    sd = dict(state_dict)
    keys = sd.keys()
    if "model.0.weight" in keys and any(k.startswith("model.1.sub.") and ".RDB1." in k for k in keys):
        return _convert_old_rrdb(sd), "old-esrgan-rrdb"
    if "model.0.weight" in keys and any(k.startswith("model.1.sub.") and ".res.0." in k for k in keys):
        return _convert_old_srresnet(sd), "old-basicsr-srresnet"
    if any(k.startswith("RRDB_trunk.") for k in keys) or "trunk_conv.weight" in keys:
        return _convert_mmsr_rrdb(sd), "mmsr-rrdbnet"
    if (
        "features.0.weight" in keys and "classifier.2.weight" in keys and any(k.endswith(".running_mean") for k in keys)
        and all(re.match(r"(features\.\d+|classifier\.[02])\.\w+$", k) for k in keys)
    ):  # the RankSRGAN Ranker/discriminator, not a torchvision VGG (classifier.{0,3,6})
        return _convert_old_vgg(sd)
    if "HRconv.weight" in keys and "LRconv.weight" not in keys and "upconv1.weight" in keys:
        return _convert_mmsr_msrresnet(sd), "mmsr-msrresnet"
    return sd, "perceptsr"


def _convert_or_raise(sd: Mapping[str, torch.Tensor], path: Path | None) -> tuple[dict[str, torch.Tensor], str]:
    try:
        return convert_state_dict(sd)
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}" if path else str(exc)) from None


# --------------------------------------------------------------------------------------------
# architecture detection


def _upscale(sd: Mapping[str, torch.Tensor], nf: int, conv: str = "upconv1") -> int:
    ratio = sd[f"{conv}.weight"].shape[0] // nf
    if "upconv2.weight" in sd:
        return 4
    if ratio in (4, 9):
        return {4: 2, 9: 3}[ratio]
    raise CheckpointError(f"cannot infer the scale: {conv} has {sd[f'{conv}.weight'].shape[0]} output channels for {nf} features")


def _detect_swinir(sd: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """SwinIR arguments from official (SwinIR/BasicSR) key names and shapes.

    ``img_size`` comes from the stored ``attn_mask`` buffers (square training patches assumed);
    a file without them gets ``persistent_attn_mask=False`` so it still loads strictly.
    ``img_range`` is not stored in weights (official JPEG models use 255: pass it explicitly).
    """
    embed_dim, in_chans = sd["conv_first.weight"].shape[:2]
    groups = _indices(sd, r"layers\.(\d+)\.residual_group\.blocks\.0\.norm1\.weight$")
    depths = [len(_indices(sd, rf"layers\.{i}\.residual_group\.blocks\.(\d+)\.norm1\.weight$")) for i in groups]
    tables = [sd[f"layers.{i}.residual_group.blocks.0.attn.relative_position_bias_table"].shape for i in groups]
    window = (round(tables[0][0] ** 0.5) + 1) // 2
    hidden = sd["layers.0.residual_group.blocks.0.mlp.fc1.weight"].shape[0]
    mlp_ratio = hidden // embed_dim if hidden % embed_dim == 0 else hidden / embed_dim
    if "conv_up1.weight" in sd:
        upsampler, upscale = "nearest+conv", 4
    elif "conv_before_upsample.0.weight" in sd:
        upsampler, nf = "pixelshuffle", sd["conv_before_upsample.0.weight"].shape[0]
        convs = _indices(sd, r"upsample\.(\d+)\.weight$")
        upscale = 3 if len(convs) == 1 and sd[f"upsample.{convs[0]}.weight"].shape[0] == 9 * nf else 2 ** len(convs)
    elif "upsample.0.weight" in sd:
        upsampler, out = "pixelshuffledirect", sd["upsample.0.weight"].shape[0]
        upscale = round((out / in_chans) ** 0.5)
        if upscale * upscale * in_chans != out:
            raise CheckpointError(f"swinir: upsample.0 has {out} output channels, not scale**2 * {in_chans}")
    else:
        upsampler, upscale = "", 1
    kwargs: dict[str, Any] = {
        "upscale": upscale, "in_chans": in_chans, "window_size": window, "depths": depths, "embed_dim": embed_dim,
        "num_heads": [t[1] for t in tables], "mlp_ratio": mlp_ratio, "upsampler": upsampler,
        "resi_connection": "3conv" if "conv_after_body.0.weight" in sd else "1conv",
    }
    masks = [k for k in sd if k.endswith(".attn_mask")]
    if masks:
        n_windows = sd[masks[0]].shape[0]
        side = round(n_windows ** 0.5)
        if side * side != n_windows:
            raise CheckpointError(f"swinir: {masks[0]} holds {n_windows} windows, not a square training patch; "
                                  "pass arch_kwargs img_size=(H, W)")
        kwargs["img_size"] = side * window
    elif max(depths) > 1:
        kwargs["persistent_attn_mask"] = False
    if "patch_embed.norm.weight" not in sd:
        kwargs["patch_norm"] = False
    if "layers.0.residual_group.blocks.0.attn.qkv.bias" not in sd:
        kwargs["qkv_bias"] = False
    return kwargs


def detect_arch(state_dict: Mapping[str, torch.Tensor]) -> tuple[str, dict[str, Any]]:
    """Infer ``(arch_name, arch_kwargs)`` from key names and shapes (legacy layouts are converted first).

    Recognises srresnet, msrresnet, rrdbnet, ranker (depth 8/12/16), vgg_discriminator
    (input size, conv bias, stage count) and swinir (official key names, see :func:`_detect_swinir`).
    Raises CheckpointError listing some keys otherwise.
    """
    sd, _ = convert_state_dict(strip_prefixes(state_dict))

    def shape(key: str) -> torch.Size:
        return sd[key].shape

    if "conv_first.weight" in sd and "LRconv.weight" in sd and "HRconv.weight" in sd:
        nf = shape("conv_first.weight")[0]
        return "srresnet", {
            "in_nc": shape("conv_first.weight")[1], "out_nc": shape("conv_last.weight")[0], "nf": nf,
            "nb": len(_indices(sd, r"recon_trunk\.(\d+)\.conv1\.weight$")), "upscale": _upscale(sd, nf),
        }
    if "conv_first.weight" in sd and "conv_hr.weight" in sd and "upconv1.weight" in sd:
        nf = shape("conv_first.weight")[0]
        return "msrresnet", {
            "num_in_ch": shape("conv_first.weight")[1], "num_out_ch": shape("conv_last.weight")[0], "num_feat": nf,
            "num_block": len(_indices(sd, r"body\.(\d+)\.conv1\.weight$")), "upscale": _upscale(sd, nf),
        }
    if "conv_first.weight" in sd and "conv_up1.weight" in sd and "conv_body.weight" in sd:
        nf, in_ch = shape("conv_first.weight")[:2]
        out_ch = shape("conv_last.weight")[0]
        scale, num_in = 4, in_ch
        if in_ch == out_ch * 4:
            scale, num_in = 2, out_ch
        elif in_ch == out_ch * 16:
            scale, num_in = 1, out_ch
        blocks = _indices(sd, r"body\.(\d+)\.rdb1\.conv1\.weight$")
        gc = shape("body.0.rdb1.conv1.weight")[0] if blocks else 32
        return "rrdbnet", {"num_in_ch": num_in, "num_out_ch": out_ch, "scale": scale, "num_feat": nf,
                           "num_block": len(blocks), "num_grow_ch": gc}
    if "conv0_0.weight" in sd and "classifier.0.weight" in sd:
        depth = 16 if "conv1_2.weight" in sd else 12 if "conv4_0.weight" in sd else 8
        return "ranker", {"in_nc": shape("conv0_0.weight")[1], "nf": shape("conv0_0.weight")[0], "depth": depth}
    if "conv0_0.weight" in sd and "linear1.weight" in sd:
        nf = shape("conv0_0.weight")[0]
        stages = len(_indices(sd, r"conv(\d+)_1\.weight$"))
        last_ch = shape(f"conv{stages - 1}_1.weight")[0]
        final = round((shape("linear1.weight")[1] / last_ch) ** 0.5)
        known = {(5, 4): 128, (6, 4): 256, (5, 9): 296}
        input_size = known.get((stages, final), final * 2**stages)
        kwargs: dict[str, Any] = {"num_in_ch": shape("conv0_0.weight")[1], "num_feat": nf, "input_size": input_size,
                                  "conv_bias": "conv0_1.bias" in sd}
        if stages != (6 if input_size == 256 else 5):
            kwargs["num_stages"] = stages
        return "vgg_discriminator", kwargs
    if "conv_first.weight" in sd and "layers.0.residual_group.blocks.0.attn.qkv.weight" in sd:
        return "swinir", _detect_swinir(sd)
    sample = ", ".join(list(sd)[:_MAX_LISTED])
    raise CheckpointError(
        f"cannot recognise the architecture from the state dict ({len(sd)} keys: {sample}, ...); pass arch=NAME"
    )


# --------------------------------------------------------------------------------------------
# strict loading


def _natural_key(key: str) -> list[Any]:
    """Sort "body.2" before "body.10"."""
    return [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in key.split(".")]


def _listing(items: list[str], limit: int = _MAX_LISTED) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... and {len(items) - limit} more" if len(items) > limit else "")


def load_pretrained(module: nn.Module, path: str | os.PathLike, *, key: str | None = None, strict: bool = True) -> nn.Module:
    """Initialise ``module`` from a checkpoint (EMA weights preferred, legacy layouts converted),
    loading strictly; errors name the file and the weight set. Returns ``module``."""
    ckpt = read_checkpoint(path, prefer_ema=True, key=key)
    sd, _layout = convert_state_dict(ckpt.state_dict)
    return load_state_dict_strict(module, sd, strict=strict, source=f"{ckpt.path} [{ckpt.weights_key or 'state dict'}]")


def load_state_dict_strict(
    module: nn.Module, state_dict: Mapping[str, torch.Tensor], *, strict: bool = True, source: str | os.PathLike | None = None
) -> nn.Module:
    """Load ``state_dict`` into ``module``, reporting every mismatch key by key.

    Raises CheckpointError listing missing keys, unexpected keys and keys whose shapes differ
    (expected vs found), each list truncated, prefixed by ``source`` (usually the file name).
    With ``strict=False`` only shape mismatches raise; missing/unexpected keys give a warning.
    Missing BatchNorm ``num_batches_tracked`` counters (old PyTorch files) are filled with 0.
    """
    expected = module.state_dict()
    sd = dict(state_dict)
    for key in expected:
        if key.endswith(".num_batches_tracked") and key not in sd and key[: -len("num_batches_tracked")] + "running_mean" in sd:
            sd[key] = torch.zeros_like(expected[key])
    missing = [k for k in expected if k not in sd]
    unexpected = sorted((k for k in sd if k not in expected), key=_natural_key)
    mis_shaped = [k for k in expected if k in sd and tuple(sd[k].shape) != tuple(expected[k].shape)]
    if mis_shaped or (strict and (missing or unexpected)):
        where = f"{source}: " if source else ""
        lines = [
            f"{where}weights do not fit {type(module).__name__}: {len(missing)} missing, {len(unexpected)} unexpected, "
            f"{len(mis_shaped)} with a different shape"
        ]
        if missing:
            lines.append(f"  missing keys ({len(missing)}): {_listing(missing)}")
        if unexpected:
            lines.append(f"  unexpected keys ({len(unexpected)}): {_listing(unexpected)}")
        if mis_shaped:
            shown = [f"{k}: expected {list(expected[k].shape)}, found {list(sd[k].shape)}" for k in mis_shaped[:_MAX_LISTED]]
            more = f"; ... and {len(mis_shaped) - _MAX_LISTED} more" if len(mis_shaped) > _MAX_LISTED else ""
            lines.append(f"  shape mismatch ({len(mis_shaped)}): " + "; ".join(shown) + more)
        lines.append("  (check the architecture and its arguments, e.g. arch=... / arch_kwargs=...)")
        raise CheckpointError("\n".join(lines))
    if missing or unexpected:
        warnings.warn(
            f"{source or 'state dict'}: loaded non-strictly into {type(module).__name__}; missing: "
            f"{_listing(missing) or 'none'}; unexpected: {_listing(unexpected) or 'none'}",
            stacklevel=2,
        )
    module.load_state_dict(sd, strict=strict)
    return module


def load_model(
    path: str | os.PathLike,
    *,
    arch: str | None = None,
    arch_kwargs: Mapping[str, Any] | None = None,
    prefer_ema: bool = True,
    key: str | None = None,
    device: str | torch.device = "cpu",
    strict: bool = True,
) -> nn.Module:
    """Build and strictly load the network stored in ``path`` (native or legacy), in eval mode.

    The architecture comes from ``arch``/``arch_kwargs`` if given, else the native metadata, else
    :func:`detect_arch`. ``model.perceptsr_meta`` holds the metadata plus how the file was read
    (``path``, ``file_format``, ``layout``, ``weights_key``, ``ema``, ``arch``, ``arch_kwargs``).
    """
    from perceptsr.archs import build_arch, get_arch

    from perceptsr.errors import ConfigError

    ckpt = read_checkpoint(path, prefer_ema=prefer_ema, key=key)
    sd, layout = _convert_or_raise(ckpt.state_dict, ckpt.path)
    meta = dict(ckpt.meta)

    def canonical(name: str) -> str:
        try:
            return get_arch(name).name
        except ConfigError:
            return name.strip().lower()

    kwargs: dict[str, Any] | None = None
    if arch is None and meta.get("arch"):
        arch, kwargs = meta["arch"], dict(meta.get("arch_kwargs") or {})
    elif arch is not None and meta.get("arch") and canonical(meta["arch"]) == canonical(arch):
        kwargs = dict(meta.get("arch_kwargs") or {})
    if kwargs is None:
        try:
            detected, detected_kwargs = detect_arch(sd)
        except CheckpointError as exc:
            if arch is None:
                raise CheckpointError(f"{ckpt.path}: {exc}") from None
            detected, detected_kwargs = None, {}
        if arch is None:
            arch, kwargs = detected, detected_kwargs
        else:
            kwargs = detected_kwargs if detected == canonical(arch) else {}
    kwargs = {**kwargs, **dict(arch_kwargs or {})}
    try:
        model = build_arch(arch, **kwargs)
    except ConfigError as exc:
        raise CheckpointError(f"{ckpt.path}: cannot build the stored architecture: {exc}") from None
    load_state_dict_strict(model, sd, strict=strict, source=f"{ckpt.path} ({arch} {kwargs})")
    model.eval().to(device)
    meta.update({
        "path": str(ckpt.path), "file_format": ckpt.file_format, "layout": layout, "weights_key": ckpt.weights_key,
        "available": ckpt.available, "ema": ckpt.ema, "arch": canonical(arch), "arch_kwargs": kwargs,
    })
    meta.setdefault("scale", _scale_of(model, kwargs))
    model.perceptsr_meta = meta
    return model


# --------------------------------------------------------------------------------------------
# training state

_NP_TAG = "__perceptsr_numpy__"


def _encode(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor) or obj is None or isinstance(obj, (bool, int, float, str, bytes, complex)):
        return obj
    if type(obj).__module__ == "numpy":
        import numpy as np

        if isinstance(obj, (np.ndarray, np.generic)):
            arr = np.asarray(obj)
            if arr.dtype.hasobject:
                raise CheckpointError("training state: NumPy arrays of Python objects cannot be stored safely")
            return {_NP_TAG: True, "dtype": arr.dtype.str, "shape": list(arr.shape), "data": arr.tobytes(),
                    "scalar": isinstance(obj, np.generic)}
    if type(obj) in (dict, OrderedDict, Counter):
        out = type(obj)()
        for k, v in obj.items():
            out[k] = _encode(v)
        return out
    if type(obj) in (list, tuple, set):
        return type(obj)(_encode(v) for v in obj)
    return obj  # anything else is checked by the weights-only scan before the file is kept


def _decode(obj: Any) -> Any:
    if isinstance(obj, dict):
        if obj.get(_NP_TAG) is True:
            import numpy as np

            arr = np.frombuffer(obj["data"], dtype=np.dtype(obj["dtype"])).reshape(obj["shape"]).copy()
            return arr[()] if obj.get("scalar") else arr
        out = type(obj)()
        for k, v in obj.items():
            out[k] = _decode(v)
        return out
    if type(obj) in (list, tuple, set):
        return type(obj)(_decode(v) for v in obj)
    return obj


def save_training_state(path: str | os.PathLike, state_dict: Mapping[str, Any]) -> Path:
    """Atomically ``torch.save`` optimizer/scheduler/RNG/counter state for resuming.

    Everything must be loadable with ``weights_only=True`` (tensors, Python scalars/strings, lists,
    tuples, dicts, sets, OrderedDict, Counter; NumPy arrays/scalars are encoded): otherwise a
    CheckpointError names the offending types and no file is written.
    """
    path = Path(path)
    encoded = _encode(dict(state_dict))

    def check(tmp: Path) -> None:
        unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(str(tmp))
        if unsafe:
            raise CheckpointError(
                f"{path}: training state holds objects that weights-only loading refuses ({', '.join(unsafe)}); "
                "store plain tensors, numbers, strings, lists and dicts instead"
            )

    def write(f: IO[bytes]) -> None:
        try:
            torch.save(encoded, f)
        except (pickle.PicklingError, TypeError, AttributeError) as exc:
            raise CheckpointError(f"{path}: training state cannot be serialised: {_first_line(exc)}") from exc

    return atomic_write(path, write, check=check)


def load_training_state(path: str | os.PathLike, *, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a file written by :func:`save_training_state` (``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such training-state file")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(_unsafe_globals_message(path, exc)) from None
    except (RuntimeError, EOFError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: unreadable training state (corrupt or truncated?): {_first_line(exc)}") from None
    return _decode(obj)


def capture_rng_state() -> dict[str, Any]:
    """Python, NumPy, torch CPU (and CUDA, if initialised) RNG states, ready for :func:`save_training_state`."""
    import random

    import numpy as np

    state: dict[str, Any] = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    import random

    import numpy as np

    if "python" in state:
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
    if "numpy" in state:
        np.random.set_state(tuple(state["numpy"]))
    if "torch" in state:
        torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --------------------------------------------------------------------------------------------
# CheckpointSaver

ModelEntry = tuple  # (module, arch) or (module, arch, arch_kwargs)


class CheckpointSaver:
    """Periodic checkpoints with retention: the last ``keep_last`` plus the best by a metric.

    Layout of ``directory``::

        iter_{N}/{name}.safetensors   one native file per model (EMA + raw weights if given)
        iter_{N}/training_state.pt    optimizer/scheduler/RNG/counters (if given)
        iter_{N}/manifest.json        iteration, files, metric
        latest.json                   {"latest": "iter_N", "iteration": N, "best": {...} | null}

    Each ``iter_N`` is written in full to a hidden temp folder and renamed into place; only then is
    ``latest.json`` updated (atomically) and are old checkpoints pruned, so a crash never loses
    the last good checkpoint. ``keep_last=None`` keeps everything. ``best_metric`` names the
    metric; ``mode`` is ``"max"`` (higher is better) or ``"min"``.
    """

    POINTER = "latest.json"
    MANIFEST = "manifest.json"
    STATE = "training_state.pt"

    def __init__(
        self, directory: str | os.PathLike, keep_last: int | None = 3, best_metric: str | None = None, mode: str = "max"
    ) -> None:
        if mode not in ("max", "min"):
            raise CheckpointError(f"CheckpointSaver: mode must be 'max' or 'min', got {mode!r}")
        if keep_last is not None and (not isinstance(keep_last, int) or keep_last < 1):
            raise CheckpointError(f"CheckpointSaver: keep_last must be a positive integer or None, got {keep_last!r}")
        self.directory = Path(directory)
        self.keep_last, self.best_metric, self.mode = keep_last, best_metric, mode
        self.directory.mkdir(parents=True, exist_ok=True)
        for stale in self.directory.glob(".iter_*.tmp*"):  # left behind by a crash mid-save
            shutil.rmtree(stale, ignore_errors=True)
        self._best: dict[str, Any] | None = self._scan_best()

    # -- queries ------------------------------------------------------------------------------
    def checkpoints(self) -> list[Path]:
        """Complete checkpoint folders, oldest iteration first."""
        found = []
        for p in self.directory.glob("iter_*"):
            m = re.fullmatch(r"iter_(\d+)", p.name)
            if m and p.is_dir() and (p / self.MANIFEST).is_file():
                found.append((int(m.group(1)), p))
        return [p for _, p in sorted(found)]

    def latest(self) -> Path | None:
        """The folder to resume from: the ``latest.json`` target, else the highest complete iteration."""
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            pointer = json.loads((self.directory / self.POINTER).read_text())
            target = self.directory / pointer["latest"]
            if (target / self.MANIFEST).is_file():
                return target
        found = self.checkpoints()
        return found[-1] if found else None

    def best(self) -> Path | None:
        """The folder with the best metric so far (None if no metric was ever given)."""
        if self._best is None:
            return None
        target = self.directory / self._best["checkpoint"]
        return target if target.is_dir() else None

    def _scan_best(self) -> dict[str, Any] | None:
        best = None
        for p in self.checkpoints():
            with contextlib.suppress(OSError, ValueError):
                man = json.loads((p / self.MANIFEST).read_text())
                value = man.get("metric")
                if value is not None and man.get("metric_name") == self.best_metric and self._better(value, best):
                    best = {"checkpoint": p.name, "iteration": man["iteration"], "metric": value}
        return best

    def _better(self, value: float, best: Mapping[str, Any] | None) -> bool:
        if value != value:  # NaN never wins
            return False
        if best is None:
            return True
        return value > best["metric"] if self.mode == "max" else value < best["metric"]

    # -- saving -------------------------------------------------------------------------------
    def save(
        self,
        iteration: int,
        *,
        models: Mapping[str, ModelEntry],
        ema: Mapping[str, nn.Module] | None = None,
        training_state: Mapping[str, Any] | None = None,
        metric: float | None = None,
        metrics: Mapping[str, float] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> Path:
        """Write ``iter_{iteration}`` and return its folder.

        ``models`` maps a file stem to ``(module, arch)`` or ``(module, arch, arch_kwargs)``;
        ``ema`` maps the same stems to EMA copies (stored in the same file, see :func:`save_model`).
        ``metric`` ranks checkpoints for "best" (default: ``metrics[best_metric]``).
        """
        if not isinstance(iteration, int) or iteration < 0:
            raise CheckpointError(f"CheckpointSaver.save: iteration must be a non-negative int, got {iteration!r}")
        ema = dict(ema or {})
        unknown = sorted(set(ema) - set(models))
        if unknown:
            raise CheckpointError(f"CheckpointSaver.save: EMA given for unknown models {unknown}; models: {sorted(models)}")
        if metric is None and self.best_metric and metrics and self.best_metric in metrics:
            metric = metrics[self.best_metric]
        metric = None if metric is None else float(metric)
        name = f"iter_{iteration}"
        final = self.directory / name
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.tmp", dir=self.directory))
        try:
            files = {}
            for stem, entry in models.items():
                if not isinstance(entry, tuple) or len(entry) not in (2, 3):
                    raise CheckpointError(f"CheckpointSaver.save: models[{stem!r}] must be (module, arch[, arch_kwargs])")
                module, arch = entry[0], entry[1]
                kwargs = entry[2] if len(entry) == 3 else {}
                save_model(tmp / f"{stem}.safetensors", module, arch=arch, arch_kwargs=kwargs, ema_model=ema.get(stem),
                           iteration=iteration, metrics=metrics, extra=extra)
                files[stem] = {"file": f"{stem}.safetensors", "arch": arch, "ema": stem in ema}
            if training_state is not None:
                save_training_state(tmp / self.STATE, training_state)
            manifest = {
                "iteration": iteration, "models": files, "training_state": self.STATE if training_state is not None else None,
                "metric_name": self.best_metric, "metric": metric, "metrics": dict(metrics or {}),
                "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            }
            atomic_write(tmp / self.MANIFEST, lambda f: f.write(json.dumps(manifest, indent=1).encode()))
            if final.exists():  # re-saving an iteration (e.g. after a resume): swap, then drop the old copy
                trash = Path(tempfile.mkdtemp(prefix=f".{name}.tmp-old", dir=self.directory))
                os.replace(final, trash / name)
                os.replace(tmp, final)
                shutil.rmtree(trash, ignore_errors=True)
            else:
                os.replace(tmp, final)
            _fsync_dir(self.directory)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if metric is not None and self._better(metric, self._best):
            self._best = {"checkpoint": name, "iteration": iteration, "metric": metric}
        elif self._best is not None and self._best["checkpoint"] == name:  # re-saved the best iteration
            self._best = self._scan_best()
        pointer = {"latest": name, "iteration": iteration,
                   "best": None if self._best is None else {**self._best, "name": self.best_metric, "mode": self.mode}}
        atomic_write(self.directory / self.POINTER, lambda f: f.write(json.dumps(pointer, indent=1).encode()))
        self._prune(keep=final)
        return final

    def _prune(self, keep: Path) -> None:
        if self.keep_last is None:
            return
        found = self.checkpoints()
        protected = set(found[-self.keep_last:]) | {keep}
        if self.best() is not None:
            protected.add(self.best())
        for p in found:
            if p not in protected:
                shutil.rmtree(p, ignore_errors=True)

    # -- resuming -----------------------------------------------------------------------------
    def restore(
        self,
        checkpoint: str | os.PathLike | None = None,
        *,
        models: Mapping[str, nn.Module] | None = None,
        ema: Mapping[str, nn.Module] | None = None,
        map_location: str | torch.device = "cpu",
    ) -> dict[str, Any] | None:
        """Load weights into ``models`` (raw weights) and ``ema`` (EMA weights) strictly and return the
        training state (``{}`` if none was saved) from ``checkpoint`` (default :meth:`latest`);
        None when there is nothing to resume from."""
        folder = Path(checkpoint) if checkpoint is not None else self.latest()
        if folder is None:
            return None
        for stems, prefer_ema in ((models or {}, False), (ema or {}, True)):
            for stem, module in stems.items():
                file = folder / f"{stem}.safetensors"
                if not file.is_file():
                    raise CheckpointError(f"{folder}: no weights for model {stem!r} (expected {file.name})")
                ckpt = read_checkpoint(file, prefer_ema=prefer_ema)
                if prefer_ema and not ckpt.ema:
                    warnings.warn(f"{file}: holds no EMA weights; initialising EMA {stem!r} from the model weights",
                                  stacklevel=2)
                load_state_dict_strict(_unwrap(module), ckpt.state_dict, source=file)
        state_file = folder / self.STATE
        return load_training_state(state_file, map_location=map_location) if state_file.is_file() else {}
