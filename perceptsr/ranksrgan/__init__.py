"""RankSRGAN (spec ``shared/specs/ranksrgan.md``) in three stages, one module per job:

- :mod:`~perceptsr.ranksrgan.rank_data`: stage 1, the rank dataset (``perceptsr rank-data``);
- :mod:`~perceptsr.ranksrgan.consistency`: how consistent its labels are with the levels' order;
- :mod:`~perceptsr.ranksrgan.datasets`: the rank dataset read back as locations and Siamese pairs;
- :mod:`~perceptsr.ranksrgan.losses`: margin-ranking / regression losses, the rank-content loss;
- :mod:`~perceptsr.ranksrgan.evaluation`: ordering accuracy and rank correlations of a Ranker;
- :mod:`~perceptsr.ranksrgan.objective`: the ``ranker`` (stage 2) and ``ranksrgan`` (stage 3)
  objectives; :mod:`~perceptsr.ranksrgan.config`: their config schemas.

Importing the package registers the schemas and the objectives.
"""

from perceptsr.ranksrgan.config import RankContentConfig, RankerObjectiveConfig, RankSRGANObjectiveConfig
from perceptsr.ranksrgan.consistency import format_consistency, level_consistency
from perceptsr.ranksrgan.datasets import RankGroups, RankPairDataset, read_rank_labels
from perceptsr.ranksrgan.evaluation import evaluate_ranker, pairwise_accuracy, rank_correlations
from perceptsr.ranksrgan.losses import RankContentLoss, ranking_loss, regression_loss
from perceptsr.ranksrgan.objective import RankerObjective, RankSRGANObjective
from perceptsr.ranksrgan.rank_data import (
    RankDataOptions,
    RankLevel,
    build_rank_dataset,
    label_patches,
    label_transform,
    patch_grid,
    prepare_level,
    sharpness,
    valid_count,
)

__all__ = [
    "RankContentConfig",
    "RankerObjectiveConfig",
    "RankSRGANObjectiveConfig",
    "RankDataOptions",
    "RankLevel",
    "build_rank_dataset",
    "format_consistency",
    "label_patches",
    "label_transform",
    "level_consistency",
    "patch_grid",
    "prepare_level",
    "sharpness",
    "valid_count",
    "RankGroups",
    "RankPairDataset",
    "read_rank_labels",
    "RankContentLoss",
    "ranking_loss",
    "regression_loss",
    "evaluate_ranker",
    "pairwise_accuracy",
    "rank_correlations",
    "RankerObjective",
    "RankSRGANObjective",
]
