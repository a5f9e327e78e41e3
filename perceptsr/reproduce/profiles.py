"""The scales ``perceptsr reproduce`` runs at, as typed dataclasses in one place.

A *profile* fixes everything a controlled run depends on: data, network sizes, iterations, patch
and batch sizes, loss weights, evaluation sets. It is stored in ``DIR/reproduce.json`` when a run
starts, and a later invocation on the same folder must name the same profile with the same values
(see :mod:`perceptsr.reproduce.runner`).

Profiles (``RANKSRGAN_PROFILES``, ``EA_ADAM_PROFILES``):

* ``tiny``: for tests. Seconds per seed on 208-px crops of scikit-image's photos; needs nothing
  beyond the package. Numbers from it mean nothing.
* ``demo``: what ``perceptsr demo`` becomes, meant for about 10 minutes on 2 CPU cores (measured
  in ``docs/reproduce.md``). Trains on scikit-image's photos (no data download), evaluates on the
  first 10 images of BSD100 and of Set14 when the benchmark folders are found (``PERCEPTSR_DATA``
  or ``../shared/datasets/benchmark``), else on two held-out photos.
* ``cpu``: at most 60 minutes per seed on 2 CPU cores (iterations chosen from measured step times,
  an estimate: see ``docs/reproduce.md``). Trains on BSD200 (BSDS500 train, disjoint from BSD100),
  validates on Set5, evaluates on all of BSD100 and Set14 (ea-adam: the first 20 BSD100 images).
  Needs the benchmark and training folders.
* ``gpu``: about 10 minutes on one modern GPU, sized by scaling the ``cpu`` measurements; never
  run on a GPU.
* ``paper``: the ``configs/paper`` settings (their data paths are relative to the working folder);
  only the chaining keys (initialisation, Ranker file, run folder, seed) are set here.

Data sources (``DataProfile``): ``samples`` = scikit-image photos (``sample_size`` > 0 cuts a centre
crop of that size), otherwise a folder under the data root (``train/BSD200/HR``), or a benchmark name
(``BSD100``, ``Set14``, ``Set5``) looked up by :func:`perceptsr.evaluation.resolve_dataset`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Optional

from perceptsr.errors import ConfigError

__all__ = [
    "DataProfile",
    "GeneratorProfile",
    "TrainStage",
    "GANStage",
    "RANK_LEVELS",
    "RankDataProfile",
    "RankerProfile",
    "RankSRGANProfile",
    "EAStage",
    "EAAdamProfile",
    "RANKSRGAN_PROFILES",
    "EA_ADAM_PROFILES",
    "COMMON_FIELDS",
    "field_defaults",
    "get_profile",
    "override_profile",
    "profile_dict",
]

SAMPLES = "samples"
# scikit-image photos shipped with the package (grey ones are repeated to RGB); train and test disjoint
SAMPLE_TRAIN = ("astronaut", "rocket", "hubble_deep_field", "immunohistochemistry", "retina", "camera",
                "brick", "grass", "gravel", "moon")
SAMPLE_TEST = ("coffee", "chelsea")


@dataclass(frozen=True)
class DataProfile:
    """Where training, validation and evaluation images come from."""

    train: str = SAMPLES  # "samples" or a folder under the data root's parent (e.g. "train/BSD200/HR")
    train_images: Optional[int] = None  # first N sorted images; None = all
    sample_size: int = 0  # samples only: centre crop side (0 = whole photos, modcropped)
    val: str = SAMPLES  # "samples" (the held-out photos) or a benchmark name ("Set5")
    val_images: Optional[int] = None
    eval: tuple[str, ...] = ("BSD100", "Set14")  # benchmark names; "samples" = the held-out photos
    eval_images: Optional[int] = None  # first N sorted images of each eval set; None = all
    eval_fallback: bool = False  # without the benchmark folders, evaluate on the held-out photos (said so)


@dataclass(frozen=True)
class GeneratorProfile:
    arch: str = "msrresnet"
    kwargs: dict[str, Any] = field(default_factory=lambda: {"num_feat": 32, "num_block": 4})


@dataclass(frozen=True)
class TrainStage:
    """One engine run: iterations, HR patch and batch size, Adam learning rate, validations."""

    iterations: int
    patch_size: int
    batch_size: int
    lr: float
    val_points: int = 4  # validations spread over the run (the convergence curves' points)
    ema_decay: float = 0.0  # EMA of the generator weights (the saved model is the EMA one)


@dataclass(frozen=True)
class GANStage(TrainStage):
    """SRGAN / RankSRGAN fine-tuning from the PSNR model; both runs use this same stage."""

    pixel_weight: float = 1e-2
    gan_weight: float = 5e-3
    disc_feat: int = 32  # VGG discriminator width (input size = patch_size)
    halve_at: tuple[float, ...] = (0.5,)  # learning rate halved at these fractions of the run


#: the rank-data levels a reproduction can make, best first: the training HR images, the seed's SRGAN
#: control and PSNR model on the training LR, and MATLAB bicubic of the LR
RANK_LEVELS = ("hr", "srgan", "psnr", "bicubic")


@dataclass(frozen=True)
class RankDataProfile:
    """Rank dataset (:class:`perceptsr.ranksrgan.RankDataOptions`) with levels HR > SRGAN > PSNR > bicubic
    (``levels``: a subset of :data:`RANK_LEVELS`, holding ``texture_level`` and ``gap_levels``)."""

    levels: tuple[str, ...] = RANK_LEVELS
    patch_size: int = 200
    stride: int = 100
    max_patches: int = 24
    valid_fraction: float = 0.25
    split_by: str = "image"
    texture_threshold: float = 40.0
    texture_level: str = "hr"
    gap_levels: tuple[str, str] = ("srgan", "bicubic")
    min_gap: float = 0.1

    def __post_init__(self):
        unknown = [lv for lv in self.levels if lv not in RANK_LEVELS]
        if unknown or len(set(self.levels)) != len(self.levels) or len(self.levels) < 2:
            raise ConfigError(f"rank_data.levels {list(self.levels)}: two or more distinct names of "
                              f"{', '.join(RANK_LEVELS)}")
        missing = [lv for lv in (self.texture_level, *self.gap_levels) if lv not in self.levels]
        if missing:
            raise ConfigError(f"rank_data.levels {list(self.levels)} lacks {', '.join(missing)} (the texture or gap "
                              f"levels)")


@dataclass(frozen=True)
class RankerProfile:
    """The Ranker (VGG-style, margin ranking) trained on the rank dataset."""

    iterations: int = 150
    batch_size: int = 8
    lr: float = 1e-3
    nf: int = 16
    depth: int = 12
    swap_order: bool = True  # robust pair order (issue 10): the release's fixed order is unstable
    crop: int = 0  # > 0: train on co-located crops of this size (the GAN patch size; see RankerObjectiveConfig)
    val_points: int = 3


@dataclass(frozen=True)
class RankSRGANProfile:
    """A ``perceptsr reproduce ranksrgan`` scale: PSNR init -> SRGAN control -> rank data -> Ranker ->
    RankSRGAN (same init, data order, seed, iterations and weights as the control) -> eval -> report."""

    name: str
    about: str  # what it is for and its time budget (measured or estimated: said here)
    data: DataProfile = field(default_factory=DataProfile)
    generator: GeneratorProfile = field(default_factory=GeneratorProfile)
    psnr: TrainStage = field(default_factory=lambda: TrainStage(600, 64, 8, 1e-3, ema_decay=0.99))
    gan: GANStage = field(default_factory=lambda: GANStage(150, 64, 8, 1e-4))
    rank_data: RankDataProfile = field(default_factory=RankDataProfile)
    ranker: RankerProfile = field(default_factory=RankerProfile)
    rank_weight: float = 0.03
    rank_bn_mode: str = "train"  # batch statistics, the release's: eval mode diverged at cpu scale (issue 10)
    rank_floor: str = "none"  # "hr": no reward past the HR patch's score (RankContentLoss.floor)
    vgg: str = "auto"  # "auto" = ImageNet VGG19 when found offline (torchvision, else Caffe), "random"
    workers: int = 2  # rank-data label processes
    paper_configs: Optional[dict[str, str]] = None  # paper: stage -> configs/paper YAML


@dataclass(frozen=True)
class EAStage:
    """EA-Adam stage A budget (the weighted-sum Adam population gets the same Adam iterations)."""

    iterations: int = 40
    patch_size: int = 64
    batch_size: int = 4
    lr: float = 1e-4
    population: int = 3
    epoch_iterations: int = 13  # EA phases at iterations 1 + k * epoch_iterations
    t_ea: int = 3  # generations per phase
    eval_images: int = 2
    eval_patch_size: int = 64
    eval_max_patches: int = 50
    disc_feat: int = 16
    gan_weight: float = 5e-3


@dataclass(frozen=True)
class EAAdamProfile:
    """A ``perceptsr reproduce ea-adam`` scale: PSNR init -> EA-Adam and weighted-sum Adam populations
    (same preferences, init and Adam budget) -> fusion (stage B) + collapse (stage C) -> ``--tradeoff``
    sweep -> eval -> hypervolume -> report."""

    name: str
    about: str
    data: DataProfile = field(default_factory=DataProfile)
    generator: GeneratorProfile = field(default_factory=GeneratorProfile)
    psnr: TrainStage = field(default_factory=lambda: TrainStage(600, 64, 8, 1e-3, ema_decay=0.99))
    ea: EAStage = field(default_factory=EAStage)
    fusion: TrainStage = field(default_factory=lambda: TrainStage(40, 64, 4, 1e-4, val_points=1))
    fuse_images: int = 20
    sweep: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
    vgg: str = "auto"
    paper_configs: Optional[dict[str, str]] = None


_TINY_DATA = DataProfile(train=SAMPLES, train_images=6, sample_size=208, val=SAMPLES, eval=(SAMPLES,))
_TINY_GEN = GeneratorProfile(kwargs={"num_feat": 8, "num_block": 1})
_DEMO_DATA = DataProfile(train=SAMPLES, val=SAMPLES, eval=("BSD100", "Set14"), eval_images=10, eval_fallback=True)
_CPU_DATA = DataProfile(train="train/BSD200/HR", val="Set5", eval=("BSD100", "Set14"))
_GPU_GEN = GeneratorProfile(arch="srresnet", kwargs={"nf": 64, "nb": 16})

RANKSRGAN_PROFILES: dict[str, RankSRGANProfile] = {
    "tiny": RankSRGANProfile(
        "tiny", "tests only: seconds per seed on six 208-px photo crops; the numbers mean nothing",
        data=_TINY_DATA, generator=_TINY_GEN,
        psnr=TrainStage(12, 32, 4, 1e-3, val_points=1),
        gan=GANStage(4, 32, 2, 1e-4, val_points=2, disc_feat=8),
        rank_data=RankDataProfile(patch_size=200, stride=100, max_patches=4, valid_fraction=0.34,
                                  split_by="patch", texture_threshold=0.0, min_gap=0.0),
        ranker=RankerProfile(iterations=6, batch_size=2, nf=4, depth=8, val_points=1),
        vgg="random", workers=0,
    ),
    "demo": RankSRGANProfile(
        "demo", "about 10 min on 2 CPU cores, scikit-image photos; an illustration, not the paper's scale",
        data=_DEMO_DATA,
        psnr=TrainStage(600, 64, 8, 1e-3, val_points=1, ema_decay=0.99),
        gan=GANStage(120, 64, 8, 1e-4, val_points=4),
        ranker=RankerProfile(iterations=150, batch_size=8),
    ),
    "cpu": RankSRGANProfile(
        "cpu", "at most 60 min per seed on 2 CPU cores (estimated from measured step times, see "
               "docs/reproduce.md): BSD200 training, Set5 validation, all of BSD100 and Set14 for evaluation",
        data=_CPU_DATA,
        generator=GeneratorProfile(kwargs={"num_feat": 64, "num_block": 6}),
        psnr=TrainStage(1500, 64, 16, 5e-4, val_points=2, ema_decay=0.99),
        gan=GANStage(800, 64, 8, 1e-4, val_points=8, disc_feat=32),
        rank_data=RankDataProfile(patch_size=200, stride=100, max_patches=4, valid_fraction=0.2,
                                  split_by="image", gap_levels=("srgan", "psnr")),
        ranker=RankerProfile(iterations=800, batch_size=8, nf=16, depth=12, val_points=4),
    ),
    "gpu": RankSRGANProfile(
        "gpu", "about 10 min on one modern GPU (sized from CPU measurements; never run on a GPU here)",
        data=_CPU_DATA, generator=_GPU_GEN,
        psnr=TrainStage(4000, 128, 16, 2e-4, val_points=4, ema_decay=0.999),
        gan=GANStage(1200, 128, 16, 1e-4, val_points=10, disc_feat=64),
        rank_data=RankDataProfile(patch_size=200, stride=100, max_patches=6, valid_fraction=0.2,
                                  split_by="image", gap_levels=("srgan", "psnr")),
        ranker=RankerProfile(iterations=3000, batch_size=32, nf=64, depth=12, val_points=6),
        workers=8,
    ),
    "paper": RankSRGANProfile(
        "paper", "the published settings (configs/paper; DIV2K / DF2K / PIRM paths relative to the working "
                 "folder); days on several GPUs",
        data=DataProfile(train="datasets/DF2K/HR", val="datasets/PIRM/test", eval=("BSD100", "Set14")),
        generator=_GPU_GEN,
        rank_data=RankDataProfile(patch_size=296, stride=148, max_patches=200, valid_fraction=0.1,
                                  split_by="patch", texture_level="srgan", gap_levels=("srgan", "psnr")),
        workers=8,
        paper_configs={"psnr": "configs/paper/srresnet_x4_psnr.yml", "ranker": "configs/paper/ranker_vgg12_niqe.yml",
                       "ranksrgan": "configs/paper/ranksrgan_x4_niqe.yml"},
    ),
}

EA_ADAM_PROFILES: dict[str, EAAdamProfile] = {
    "tiny": EAAdamProfile(
        "tiny", "tests only: seconds per seed on six 208-px photo crops; the numbers mean nothing",
        data=_TINY_DATA, generator=_TINY_GEN,
        psnr=TrainStage(12, 32, 4, 1e-3, val_points=1),
        ea=EAStage(iterations=6, patch_size=32, batch_size=2, population=3, epoch_iterations=2, t_ea=1,
                   eval_images=1, eval_patch_size=32, eval_max_patches=4, disc_feat=8),
        fusion=TrainStage(3, 32, 2, 1e-4, val_points=1), fuse_images=2, sweep=(0.0, 0.5, 1.0), vgg="random",
    ),
    "demo": EAAdamProfile(
        "demo", "about 10 min on 2 CPU cores, scikit-image photos; an illustration, not the paper's scale",
        data=_DEMO_DATA,
    ),
    "cpu": EAAdamProfile(
        "cpu", "at most 60 min per seed on 2 CPU cores (estimated from measured step times): BSD200 training, "
               "Set5 validation, the first 20 BSD100 images and Set14 for evaluation",
        data=DataProfile(train="train/BSD200/HR", val="Set5", eval=("BSD100", "Set14"), eval_images=20),
        generator=GeneratorProfile(kwargs={"num_feat": 64, "num_block": 6}),
        psnr=TrainStage(1500, 64, 16, 5e-4, val_points=2, ema_decay=0.99),
        ea=EAStage(iterations=150, patch_size=64, batch_size=8, population=5, epoch_iterations=50, t_ea=6,
                   eval_images=4, eval_patch_size=96, eval_max_patches=40, disc_feat=32),
        fusion=TrainStage(100, 64, 8, 1e-4, val_points=1), fuse_images=40,
    ),
    "gpu": EAAdamProfile(
        "gpu", "about 10 min on one modern GPU (sized from CPU measurements; not run on a GPU here)",
        data=_CPU_DATA, generator=GeneratorProfile(kwargs={"num_feat": 64, "num_block": 16}),
        psnr=TrainStage(20000, 128, 16, 2e-4, val_points=4, ema_decay=0.999),
        ea=EAStage(iterations=3000, patch_size=128, batch_size=16, population=5, epoch_iterations=500, t_ea=30,
                   eval_images=8, eval_patch_size=128, eval_max_patches=100, disc_feat=64),
        fusion=TrainStage(2000, 128, 16, 1e-4, val_points=2), fuse_images=100,
    ),
    "paper": EAAdamProfile(
        "paper", "the released settings (configs/paper; data paths relative to the working folder)",
        data=DataProfile(train="datasets/Flickr2K/HR", val="Set5", eval=("BSD100", "Set14")),
        generator=GeneratorProfile(kwargs={"num_feat": 64, "num_block": 16}), fuse_images=100,
        paper_configs={"psnr": "configs/paper/msrresnet_x4_psnr.yml", "ea_adam": "configs/paper/ea_adam_msrresnet_x4.yml",
                       "fusion": "configs/paper/fusion_msrresnet_x4.yml"},
    ),
}

_TABLES = {"ranksrgan": RANKSRGAN_PROFILES, "ea-adam": EA_ADAM_PROFILES}


def get_profile(experiment: str, name: str):
    """The profile ``name`` of ``experiment`` (``ranksrgan`` or ``ea-adam``)."""
    if experiment not in _TABLES:
        raise ConfigError(f"unknown experiment {experiment!r}; choose one of {', '.join(_TABLES)}")
    table = _TABLES[experiment]
    if name not in table:
        raise ConfigError(f"unknown {experiment} profile {name!r}; choose one of {', '.join(table)}")
    return table[name]


def field_defaults(profile) -> dict:
    """The declared default of every field, in :func:`profile_dict`'s shape (fields without one are
    left out). A folder started before a field existed still matches when the field is at its
    default (:class:`perceptsr.reproduce.runner.Runner`): new fields default to the old behaviour."""
    out = {}
    for f in dataclasses.fields(profile):
        value = getattr(profile, f.name)
        if dataclasses.is_dataclass(value):
            out[f.name] = field_defaults(value)
        elif f.default is not dataclasses.MISSING:
            out[f.name] = _plain(f.default)
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = _plain(f.default_factory())
    return out


def _plain(v):
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    return v


def profile_dict(profile) -> dict:
    """The profile as plain JSON-able data (tuples become lists), as stored in ``reproduce.json``."""
    return _plain(dataclasses.asdict(profile))


#: profile fields shared by every seed and stage (data, weights found offline, paper files): an
#: ablation that changed them would be another experiment, so it is refused
COMMON_FIELDS = ("name", "about", "data", "vgg", "paper_configs")


def _coerce(text: str, current, key: str):
    """``text`` as the type of the profile's ``current`` value (tuples: items separated by ``:``)."""
    try:
        if isinstance(current, bool):
            if text.lower() not in ("true", "false"):
                raise ValueError("not true or false")
            return text.lower() == "true"
        if isinstance(current, int):
            return int(text)
        if isinstance(current, float):
            return float(text)
        if isinstance(current, tuple):
            items = [x for x in text.split(":") if x]
            return tuple(_coerce(x, current[0], key) for x in items) if current else tuple(items)
        if current is None or isinstance(current, str):
            return text
    except ValueError as exc:
        raise ConfigError(f"ablation {key}={text}: not a {type(current).__name__} ({exc})") from None
    raise ConfigError(f"ablation {key}: a {type(current).__name__} field can't be set from the command line")


def override_profile(profile, overrides: dict[str, str]):
    """A copy of ``profile`` with dotted ``overrides`` (``rank_weight``, ``ranker.iterations``) set;
    each value is parsed as the type of the field it replaces. Unknown keys and the shared fields
    (:data:`COMMON_FIELDS`) are refused with one line naming the key."""
    import difflib

    out = profile
    for key, text in overrides.items():
        path = key.split(".")
        if path[0] in COMMON_FIELDS:
            raise ConfigError(f"ablation {key}: {path[0]!r} is shared by every stage of the folder; an experiment with "
                              f"another value needs its own --out folder")
        chain = [out]
        for i, part in enumerate(path):
            node = chain[-1]
            names = [f.name for f in dataclasses.fields(node)] if dataclasses.is_dataclass(node) else []
            if part not in names:
                where = ".".join(path[:i]) or "the profile"
                hint = difflib.get_close_matches(part, names, n=1)
                raise ConfigError(f"ablation {key}: {where} has no field {part!r}"
                                  + (f"; did you mean {hint[0]!r}?" if hint else f" (fields: {', '.join(names)})"))
            chain.append(getattr(node, part))
        value = _coerce(text, chain[-1], key)
        for node, part in zip(reversed(chain[:-1]), reversed(path)):
            value = dataclasses.replace(node, **{part: value})
        out = value
    return out
