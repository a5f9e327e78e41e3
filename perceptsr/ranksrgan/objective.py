"""RankSRGAN's objectives: stage 2 trains the Ranker (``ranker``), stage 3 the generator
(``ranksrgan``: the GAN objective plus the rank-content loss of a frozen Ranker)."""

from __future__ import annotations

import torch
from torch import nn

from perceptsr.errors import ConfigError
from perceptsr.ranksrgan.datasets import RankGroups, RankPairDataset
from perceptsr.ranksrgan.evaluation import evaluate_ranker
from perceptsr.ranksrgan.losses import RankContentLoss, ranking_loss, regression_loss
from perceptsr.train.context import RunContext
from perceptsr.train.objectives import GANObjective, Objective, register_objective
from perceptsr.train.optim import build_optimizer, build_scheduler

__all__ = ["RankerObjective", "RankSRGANObjective"]


def _rank_dir(cfg) -> str:
    """The rank dataset root of a ``ranker`` config: ``objective.rank_dir``, or the older spelling
    ``data.train.hr_dir`` when ``rank_dir`` is null."""
    new, old = cfg.objective.rank_dir, cfg.data.train.hr_dir
    if new is None and old is None:
        raise ConfigError("config key 'objective.rank_dir' is required for objective type 'ranker': the folder "
                          "written by perceptsr rank-data (older configs: data.train.hr_dir)")
    if new is not None and old is not None and new != old:
        raise ConfigError(f"config keys 'objective.rank_dir' ({new!r}) and 'data.train.hr_dir' ({old!r}) both name "
                          f"the rank dataset; give only objective.rank_dir")
    return new if new is not None else old


@register_objective("ranker")
class RankerObjective(Objective):
    """RankSRGAN stage 2 in the training loop: the trained network is the Ranker (``model.arch:
    ranker``, saved as ``ranker.safetensors``), its data the folder written by ``perceptsr
    rank-data`` (``objective.rank_dir``); see :class:`~perceptsr.ranksrgan.config.RankerObjectiveConfig`.
    Each step scores both sides of a pair in one forward pass over ``cat([x1, x2])`` (``pair_forward:
    joint``, shared BatchNorm statistics) or in two (``separate``, per-side statistics, as the
    release); validation is its own (:func:`~perceptsr.ranksrgan.evaluation.evaluate_ranker`)."""

    trained_network = "ranker"
    own_validation = True

    def __init__(self, generator: nn.Module, cfg, ctx: RunContext):
        super().__init__(generator, cfg, ctx)
        from perceptsr.archs.ranker_arch import Ranker

        if not isinstance(generator, Ranker):
            raise ConfigError(f"config key 'model.arch': the ranker objective trains a Ranker (arch 'ranker'), "
                              f"got {cfg.model.arch!r}")
        self.rank_dir = _rank_dir(cfg)
        self.best_metric = (self.options.best_metric, True)
        self.net_r = self.runtime.wrap(generator)
        self.optimizer = build_optimizer(generator.parameters(), cfg.optim)
        self.scheduler = build_scheduler(self.optimizer, cfg.schedule)
        self._valid: RankGroups | None = None

    def train_dataset(self):
        o = self.options
        return RankPairDataset(self.rank_dir, o.train_split, seed=self.cfg.seed,
                               hard_pair_weight=o.hard_pair_weight, swap_order=o.swap_order, crop=o.crop)

    def optimizers(self):
        return {self.trained_network: self.optimizer}

    def schedulers(self):
        return {self.trained_network: self.scheduler}

    def step(self, batch, iteration):
        o = self.options
        x1, x2 = self.runtime.to_device(batch["img1"]), self.runtime.to_device(batch["img2"])
        l1, l2 = batch["score1"].to(self.runtime.device), batch["score2"].to(self.runtime.device)
        self.net_r.train()
        with self.runtime.autocast():
            if o.pair_forward == "joint":
                s1, s2 = self.net_r(torch.cat([x1, x2])).float().reshape(-1).split(len(x1))
            else:
                s1 = self.net_r(x1).float().reshape(-1)
                s2 = self.net_r(x2).float().reshape(-1)
        if o.loss == "margin":
            loss = ranking_loss(s1, s2, l1, l2, margin=o.margin, clamp=o.clamp or None)
        else:
            loss = regression_loss(torch.cat([s1, s2]), torch.cat([l1, l2]), o.loss)
        self.optimize(loss, self.optimizer, self.generator, name=f"ranker {o.loss} loss")
        agree = ((s1 >= s2) == (l1 >= l2)).float().mean()
        return {f"loss/{o.loss}": loss.item(), "train/pair_accuracy": agree.item()}

    def validate(self, model: nn.Module, iteration: int) -> dict[str, float]:
        if self._valid is None:
            self._valid = RankGroups(self.rank_dir, self.options.valid_split)
            if not len(self._valid):
                raise ConfigError(f"{self.rank_dir}: the {self.options.valid_split} split is empty")
        metrics = evaluate_ranker(model, self._valid, self.runtime.device, self.options.val_batch_size,
                                  crop=self.options.crop)
        best = self.options.best_metric
        return {best: metrics.pop(best), **metrics}  # the best-checkpoint metric first


@register_objective("ranksrgan")
class RankSRGANObjective(GANObjective):
    """SRGAN's generator and discriminator steps, with ``g_rank`` = ``rank.weight * sum sigmoid(R(SR))``
    added to the generator loss (see :class:`~perceptsr.ranksrgan.losses.RankContentLoss`)."""

    def setup_extra_terms(self) -> None:
        r = self.options.rank
        self.rank = None
        if r.weight > 0:
            self.rank = self.runtime.prepare_module(RankContentLoss(
                r.checkpoint, weight=r.weight, bias=r.bias, bn_mode=r.bn_mode, arch=r.arch,
                arch_kwargs=r.arch_kwargs, floor=r.floor,
            ))

    def extra_terms(self, sr: torch.Tensor, hr: torch.Tensor) -> dict[str, torch.Tensor]:
        return {} if self.rank is None else {"g_rank": self.rank(sr, hr)}
