"""RankSRGAN's config schemas: the rank-content loss, the ``ranksrgan`` objective and the Ranker."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Optional

from perceptsr.config import GANObjectiveConfig, ModelConfig, ObjectiveConfig, check_field


@dataclass(frozen=True)
class RankContentConfig:
    """RankSRGAN's rank-content loss ``weight * sum_batch sigmoid(R(SR) - bias)`` with a frozen Ranker.

    ``bn_mode``: ``train`` (default, the release's behaviour: it never calls ``eval()`` on the
    Ranker) normalises by the SR batch's own statistics; ``eval`` uses the running statistics. See
    :class:`~perceptsr.ranksrgan.losses.RankContentLoss` for the measured trade-off: eval mode lets
    the term see a uniformly better batch, and lets the generator drive a small Ranker past every
    real image with a pattern added to all outputs (issue 10: it diverged at the cpu profile).
    ``floor: hr`` (eval mode only) gives no reward past the HR image's score."""

    checkpoint: str  # a Ranker file (native, mmsr or old ``features.N`` layout)
    weight: float = 0.03
    bias: float = 0.0  # the original's R_bias
    bn_mode: Literal["train", "eval"] = "train"  # train = batch statistics, as the original
    floor: Literal["none", "hr"] = "none"  # hr: no reward past the HR image's score (perceptsr extension)
    arch: Optional[str] = None  # null = from the file's metadata or key names
    arch_kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        check_field(self.weight >= 0, "weight", self.weight, "must be >= 0")
        check_field(self.floor == "none" or self.bn_mode == "eval", "floor", self.floor,
                    "needs bn_mode 'eval' (train-mode BatchNorm makes SR and HR scores incomparable)")


@ObjectiveConfig.register("ranksrgan")
@dataclass(frozen=True)
class RankSRGANObjectiveConfig(GANObjectiveConfig):
    """The GAN objective with RankSRGAN's defaults: pixel 0, VGG19-54 L1 1.0, vanilla GAN 5e-3, rank
    0.03 (``rank.checkpoint`` required), 296-input discriminator."""

    type: str = "ranksrgan"
    pixel_weight: float = 0.0
    rank: Optional[RankContentConfig] = None
    discriminator: ModelConfig = field(default_factory=lambda: ModelConfig(arch="vgg_discriminator_296"))

    def __post_init__(self):
        check_field(self.rank is not None, "rank", self.rank, "is required for type 'ranksrgan' (rank.checkpoint: a Ranker)")
        super().__post_init__()

    def loss_weights(self) -> dict[str, float]:
        return {**super().loss_weights(), "rank.weight": self.rank.weight}


@ObjectiveConfig.register("ranker")
@dataclass(frozen=True)
class RankerObjectiveConfig(ObjectiveConfig):
    """RankSRGAN stage 2 (:class:`perceptsr.ranksrgan.RankerObjective`): train ``model.arch: ranker``
    (saved as ``ranker.safetensors``) on ``rank_dir``, the folder written by ``perceptsr rank-data``;
    ``data.train.hr_dir`` is the older spelling of ``rank_dir``, read when ``rank_dir`` is null (the
    batch size and workers stay in ``data.train``). Validation on its ``valid_split`` (``data.val``
    unused). ``loss``: ``margin`` = Siamese margin ranking (higher score = worse), ``l1``/``l2`` =
    regression of the metric label (the paper's rank-vs-regression ablation).

    ``pair_forward``: ``joint`` (default) scores both sides of the batch's pairs in one forward pass
    over ``cat([x1, x2])``, so train-mode BatchNorm normalises every patch by the same statistics of
    both sides, which is also what the eval-mode running statistics average. ``separate`` is the
    release's two passes: each side gets its own statistics, and with the release's order (the
    better level always ``x1``) a side's batch holds only the better or only the worse levels, so
    training can lean on the per-side normalisation that the eval-mode Ranker never sees (issue 10:
    valid SROCC -0.59 to 0.83 over 12 toy seeds; 0.90 to 0.98 with either fix). ``swap_order``
    (swap each pair with probability 1/2) is the other fix, for ``separate``; with ``joint`` it
    changes nothing (the loss is symmetric). ``joint`` is the default because it removes the cause
    whatever the pair sampling (hard-pair weighting, label ties) and runs one forward call, not two.
    ``configs/paper/ranker_vgg12_niqe_release.yml`` keeps the release's ``separate`` without swap.

    ``crop`` (a perceptsr extension; 0 = the release, whole patches): the rank-content loss scores
    the generator's training patches, which may be smaller than the Ranker's (the release trains its
    generator on 296-px patches, the Ranker's size: spec, issue 2). With ``crop`` set to the
    generator's HR patch size the Ranker trains on co-located windows of that size, labelled by the
    whole patches' metric, and its validation adds ``crop_accuracy`` (centre windows). At the cpu
    profile it was not needed: a Ranker trained on 200-px patches ordered centre 64-px crops about
    as well (within-location accuracy 0.802 against 0.808).

    ``best_metric`` picks the best checkpoint: ``accuracy`` (default) is the within-location pairwise
    accuracy, the release's criterion and what the margin loss trains; the global ``srocc`` /
    ``kendall`` mostly measure how the metric varies across image content."""

    type: str = "ranker"
    rank_dir: Optional[str] = None  # the rank dataset root; null = data.train.hr_dir (older configs)
    loss: Literal["margin", "l1", "l2"] = "margin"
    margin: float = 0.5
    clamp: float = 5.0  # scores clamped to [-clamp, clamp] before the margin loss; 0 = off
    hard_pair_weight: float = 1.0  # sampling weight of the two gap levels' pair (3 = the release's 3:1:1)
    pair_forward: Literal["joint", "separate"] = "joint"  # joint = one pass over cat([x1, x2]); separate = release
    swap_order: bool = False  # swap each pair with probability 1/2; the release feeds the better level first
    crop: int = 0  # > 0: train on the same random crop x crop window of both patches (labels: whole patches)
    train_split: str = "train"
    valid_split: str = "valid"
    val_batch_size: int = 16
    best_metric: Literal["accuracy", "hard_accuracy", "srocc", "kendall", "location_srocc",
                         "location_kendall"] = "accuracy"  # picks the best checkpoint

    def __post_init__(self):
        check_field(self.margin >= 0, "margin", self.margin, "must be >= 0")
        check_field(self.clamp >= 0, "clamp", self.clamp, "must be >= 0")
        check_field(self.hard_pair_weight > 0, "hard_pair_weight", self.hard_pair_weight, "must be > 0")
        check_field(self.val_batch_size >= 1, "val_batch_size", self.val_batch_size, "must be >= 1")
        check_field(self.crop == 0 or self.crop >= 32, "crop", self.crop, "must be 0 (whole patches) or >= 32")


