"""The seed-independent first stages of a reproduction: images and the offline assets they need.

:func:`prepare_data` writes (or finds) the training HR folder and its MATLAB-bicubic x4 LR, the
validation folder and the evaluation sets of a :class:`~perceptsr.reproduce.profiles.DataProfile`.
:func:`prepare_assets` picks the NIQE model (the official LIVE parameters when found offline, else
one fitted on the training HR, said loudly because its values are then comparable only within the
run) and the perceptual-loss VGG19 weights.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from perceptsr.errors import ConfigError, ImageReadError
from perceptsr.reproduce.profiles import SAMPLE_TEST, SAMPLE_TRAIN, SAMPLES, DataProfile

__all__ = ["SCALE", "prepare_data", "prepare_assets", "niqe_metric", "training_lr"]

SCALE = 4
FITTED_NIQE = "niqe-fitted"  # the metric name a fitted NIQE model is registered under


def _sample(name: str, size: int) -> np.ndarray:
    from skimage import data as skdata

    img = np.asarray(getattr(skdata, name)())
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    img = img[..., :3]
    if size:
        h, w = img.shape[:2]
        if min(h, w) < size:
            raise ImageReadError(f"scikit-image sample {name!r} ({w}x{h}) is smaller than sample_size {size}")
        top, left = (h - size) // 2, (w - size) // 2
        img = img[top : top + size, left : left + size]
    return img


def _write_samples(names, folder: Path, size: int) -> None:
    from perceptsr.data.color import modcrop
    from perceptsr.data.io import write_image

    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        target = folder / f"{name}.png"
        if not target.is_file():
            write_image(target, modcrop(_sample(name, size), SCALE).astype(np.float32) / 255.0)


def _data_root() -> Path | None:
    from perceptsr.evaluation import default_data_root

    return default_data_root()


def _training_folder(spec: str) -> Path:
    """``spec`` as given (relative to the working folder), else under the benchmark root's parent."""
    path = Path(spec)
    if path.is_dir():
        return path.resolve()
    root = _data_root()
    if root is not None and not path.is_absolute() and (root.parent / path).is_dir():
        return (root.parent / path).resolve()
    raise ConfigError(f"training images {spec!r}: no such folder here or under the data root "
                      f"({root.parent if root else 'none found'}); set PERCEPTSR_DATA to the benchmark folder "
                      f"(the one holding Set5, Set14, BSD100) of a datasets tree that has it")


def _first(files: list[Path], n: int | None) -> list[Path]:
    return files if n is None else files[:n]


def _copy_subset(files: list[Path], target: Path) -> Path:
    target.mkdir(parents=True, exist_ok=True)
    for f in files:
        if not (target / f.name).is_file():
            shutil.copyfile(f, target / f.name)
    return target


def training_lr(hr_dir: Path, lr_dir: Path) -> Path:
    """MATLAB-bicubic x4 LR of every training HR image (the rank levels are SR outputs of these)."""
    from perceptsr.data.color import modcrop
    from perceptsr.data.imresize import imresize
    from perceptsr.data.io import list_images, read_image, write_image

    lr_dir.mkdir(parents=True, exist_ok=True)
    for path in list_images(hr_dir):
        target = lr_dir / f"{path.stem}.png"
        if not target.is_file():
            hr = modcrop(read_image(path, mode="rgb"), SCALE)
            write_image(target, np.clip(imresize(hr, 1 / SCALE), 0, 1))
    return lr_dir


def _benchmark(name: str, images: int | None, out: Path) -> dict:
    """A benchmark set as ``{name, hr_dir, lr_dir, total}``; a first-N subset is copied under ``out``."""
    from perceptsr.data.io import list_images
    from perceptsr.evaluation import resolve_dataset

    spec = resolve_dataset(name, scale=SCALE)
    hr = list_images(spec.hr_dir)
    if images is None or images >= len(hr):
        return {"name": spec.name, "hr_dir": str(spec.hr_dir), "lr_dir": None if spec.lr_dir is None else str(spec.lr_dir),
                "images": len(hr), "of": len(hr)}
    label = f"{spec.name}-first{images}"
    chosen = hr[:images]
    hr_dir = _copy_subset(chosen, out / label / "HR")
    lr_dir = None
    if spec.lr_dir is not None:
        stems = {p.stem for p in chosen}
        lr = [p for p in list_images(spec.lr_dir) if p.stem.removesuffix(f"x{SCALE}") in stems or p.stem in stems]
        lr_dir = str(_copy_subset(lr, out / label / "LR_bicubic" / f"X{SCALE}"))
    return {"name": label, "hr_dir": str(hr_dir), "lr_dir": lr_dir, "images": len(chosen), "of": len(hr)}


def prepare_data(profile: DataProfile, out: Path, say) -> dict:
    """Training HR + LR, validation and evaluation folders under ``out`` (a stage folder)."""
    from perceptsr.data.io import list_images

    notes = []
    test_dir = out / "test" / "HR"
    if SAMPLES in (profile.train, profile.val, *profile.eval) or profile.eval_fallback:
        _write_samples(SAMPLE_TEST, test_dir, profile.sample_size)
    if profile.train == SAMPLES:
        names = _first(list(SAMPLE_TRAIN), profile.train_images)
        train_dir = out / "train" / "HR"
        _write_samples(names, train_dir, profile.sample_size)
        source = f"scikit-image photos {', '.join(names)}" + (f" ({profile.sample_size}-px centre crops)"
                                                               if profile.sample_size else "")
    else:
        folder = _training_folder(profile.train)
        files = list_images(folder)
        if not files:
            raise ImageReadError(f"{folder}: no training images")
        if profile.train_images is not None and profile.train_images < len(files):
            train_dir = _copy_subset(files[: profile.train_images], out / "train" / "HR")
        else:
            train_dir = folder
        source = str(folder)
    train_lr = training_lr(train_dir, out / "train" / f"LR_bicubic_X{SCALE}")

    if profile.val == SAMPLES:
        val = {"name": "held-out photos", "hr_dir": str(test_dir), "lr_dir": None}
    else:
        val = _benchmark(profile.val, profile.val_images, out / "val")

    evals = []
    for name in profile.eval:
        if name == SAMPLES:
            evals.append({"name": "photos", "hr_dir": str(test_dir), "lr_dir": None,
                          "images": len(SAMPLE_TEST), "of": len(SAMPLE_TEST)})
            continue
        try:
            evals.append(_benchmark(name, profile.eval_images, out / "eval"))
        except (ConfigError, ImageReadError) as exc:
            if not profile.eval_fallback:
                raise
            notes.append(f"{name} not found ({exc}); evaluating on the held-out photos instead")
    if not evals:
        evals.append({"name": "photos", "hr_dir": str(test_dir), "lr_dir": None,
                      "images": len(SAMPLE_TEST), "of": len(SAMPLE_TEST)})
    for note in notes:
        say(f"NOTE: {note}")
    return {"train_hr": str(train_dir), "train_lr": str(train_lr), "train_source": source,
            "train_images": len(list_images(train_dir)), "val": val, "eval": evals, "notes": notes}


def prepare_assets(train_hr: str, vgg: str, out: Path, say, *, samples: bool = False) -> dict:
    """The NIQE model and the VGG19 weights (``vgg``: ``auto`` or ``random``) this run uses.

    ``samples``: the training images are photo crops; a fitted NIQE model then also uses the whole
    photos (small crops give too few 96-px blocks for a 36x36 covariance)."""
    from perceptsr.assets import find_local

    official = find_local("niqe_params") or find_local("niqe_params_npz")
    if official is not None:
        niqe = {"official": True, "params_path": str(official), "model": "LIVE NIQE release parameters"}
    else:
        from perceptsr.data.color import rgb2gray
        from perceptsr.data.io import list_images, read_image
        from perceptsr.metrics.niqe import fit_niqe_params

        say("NOTE: the official NIQE parameters are not available offline (set PERCEPTSR_ASSETS); fitting a "
            "pristine model on the training HR images. NIQE values are then comparable within this run only.")
        grey = [np.round(rgb2gray(np.round(read_image(p)[..., :3] * 255) / 255) * 255) for p in list_images(train_hr)]
        if samples:
            grey += [np.round(rgb2gray(_sample(n, 0).astype(np.float64) / 255) * 255) for n in SAMPLE_TRAIN]
        mu, cov = fit_niqe_params(grey)
        path = out / "niqe_fitted_params.npz"
        np.savez(path, mu_pris_param=mu, cov_pris_param=cov)
        niqe = {"official": False, "params_path": str(path), "model": "fitted on the training HR (not comparable with papers)"}
    if vgg == "random":
        weights, feature_weight, about = None, 1.0, "random VGG19 (profile setting)"
    elif find_local("vgg19") is not None:
        weights, feature_weight, about = "torchvision", 1.0, "ImageNet VGG19 (torchvision)"
    elif find_local("vgg19_caffe") is not None:
        # Caffe VGG takes 0..255 input without std division: its features are ~58x torchvision's
        weights, feature_weight, about = "caffe", 0.017, "ImageNet VGG19 (Caffe weights, feature weight 1/58)"
    else:
        say("NOTE: no VGG19 weights offline (set PERCEPTSR_ASSETS): the perceptual loss uses a fixed random VGG19.")
        weights, feature_weight, about = None, 1.0, "random VGG19 (no weights found)"
    lpips = find_local("lpips_alex") is not None and find_local("alexnet") is not None
    if not lpips:
        say("NOTE: LPIPS-alex weights are not available offline (set PERCEPTSR_ASSETS): LPIPS is left out.")
    return {"niqe": niqe, "vgg": {"weights": weights, "feature_weight": feature_weight, "about": about},
            "lpips_available": lpips}


def niqe_metric(assets: dict) -> str:
    """The metric name NIQE is scored under: ``niqe``, or the fitted model registered as ``niqe-fitted``."""
    info = assets["niqe"]
    if info["official"]:
        return "niqe"
    from perceptsr.metrics import register_metric
    from perceptsr.metrics.niqe import NIQE

    register_metric(FITTED_NIQE, NIQE, params_path=info["params_path"], overwrite=True)
    return FITTED_NIQE
