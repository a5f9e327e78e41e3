"""RankSRGAN's config schemas: the rank-content loss, the ``ranksrgan`` objective and the Ranker."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Optional

from perceptsr.config import GANObjectiveConfig, ModelConfig, ObjectiveConfig, check_field


@dataclass(frozen=True)
class RankContentConfig:
    """RankSRGAN's rank-content loss ``weight * sum_batch sigmoid(R(SR) - bias)`` with a frozen Ranker."""

    checkpoint: str  # a Ranker file (native, mmsr or old ``features.N`` layout)
    weight: float = 0.03
    bias: float = 0.0  # the original's R_bias
    bn_mode: Literal["train", "eval"] = "train"  # train = batch statistics, as the original (never calls eval())
    arch: Optional[str] = None  # null = from the file's metadata or key names
    arch_kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        check_field(self.weight >= 0, "weight", self.weight, "must be >= 0")


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
    regression of the metric label (the paper's rank-vs-regression ablation)."""

    type: str = "ranker"
    rank_dir: Optional[str] = None  # the rank dataset root; null = data.train.hr_dir (older configs)
    loss: Literal["margin", "l1", "l2"] = "margin"
    margin: float = 0.5
    clamp: float = 5.0  # scores clamped to [-clamp, clamp] before the margin loss; 0 = off
    hard_pair_weight: float = 1.0  # sampling weight of the two gap levels' pair (3 = the release's 3:1:1)
    swap_order: bool = False  # swap pairs at random; the release feeds the better level first (per-side BN)
    train_split: str = "train"
    valid_split: str = "valid"
    val_batch_size: int = 16
    best_metric: Literal["srocc", "kendall", "accuracy"] = "srocc"  # picks the best checkpoint

    def __post_init__(self):
        check_field(self.margin >= 0, "margin", self.margin, "must be >= 0")
        check_field(self.clamp >= 0, "clamp", self.clamp, "must be >= 0")
        check_field(self.hard_pair_weight > 0, "hard_pair_weight", self.hard_pair_weight, "must be > 0")
        check_field(self.val_batch_size >= 1, "val_batch_size", self.val_batch_size, "must be >= 1")


