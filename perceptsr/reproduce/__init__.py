"""``perceptsr reproduce``: the papers' controlled comparisons as one resumable command per method.

* :mod:`~perceptsr.reproduce.profiles`: the scales (``tiny``, ``demo``, ``cpu``, ``gpu``, ``paper``);
* :mod:`~perceptsr.reproduce.runner`: the folder's manifest and its resumable stages;
* :mod:`~perceptsr.reproduce.driver`: :func:`run_reproduce`, the one entry point;
* :mod:`~perceptsr.reproduce.data`: images and offline assets (NIQE model, VGG19);
* :mod:`~perceptsr.reproduce.common`: the stages and config pieces both experiments share;
* :mod:`~perceptsr.reproduce.ranksrgan`: RankSRGAN against its SRGAN control;
* :mod:`~perceptsr.reproduce.ea_adam`: EA-Adam against weighted-sum Adam, fusion, trade-off;
* :mod:`~perceptsr.reproduce.summary`, :mod:`~perceptsr.reproduce.figures`: ``summary.json`` and
  ``report.html``.
"""

from perceptsr.reproduce.driver import EXPERIMENTS, run_reproduce
from perceptsr.reproduce.profiles import EA_ADAM_PROFILES, RANKSRGAN_PROFILES, get_profile
from perceptsr.reproduce.runner import ReproduceError

__all__ = ["EXPERIMENTS", "EA_ADAM_PROFILES", "RANKSRGAN_PROFILES", "ReproduceError", "get_profile", "run_reproduce"]
