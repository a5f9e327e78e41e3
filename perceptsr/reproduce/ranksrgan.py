"""``perceptsr reproduce ranksrgan``: RankSRGAN against its SRGAN control, per seed.

Stages (``DIR/<key>/``, see :mod:`perceptsr.reproduce.runner`):

* ``common/data``, ``common/assets``: images (:mod:`perceptsr.reproduce.data`), NIQE model, VGG19;
  ``common/bicubic``: the bicubic baseline scored once;
* per seed ``seed_<s>/``:

  1. ``psnr``: PSNR pre-training of the generator (run ``PSNR``);
  2. ``srgan``: the SRGAN control from the PSNR model (run ``SRGAN``);
  3. ``rank_data``: levels HR > SRGAN > PSNR > bicubic on the training images, labelled with NIQE
     (:func:`perceptsr.ranksrgan.build_rank_dataset`);
  4. ``ranker``: the Ranker (run ``Ranker``), scored on the held-out split of the rank dataset;
  5. ``ranksrgan``: RankSRGAN (run ``RankSRGAN``), from the same PSNR model;
  6. ``eval``: PSNR/SSIM (``sr-y``), NIQE (``pirm``) and LPIPS on the evaluation sets.

The control and RankSRGAN are the *same* config except ``objective.type`` and ``objective.rank``
(:func:`gan_configs`; a test checks it): same initial generator, same initial discriminator (one
file, saved once per seed, because building the Ranker draws from the global RNG before the
discriminator is made), same seed and therefore data order and augmentation, same iterations,
schedule and pixel / perceptual / GAN weights.

After each seed ``DIR/summary.json`` and ``DIR/report.html`` are rewritten
(:mod:`perceptsr.reproduce.summary`, :mod:`perceptsr.reproduce.figures`).
"""

from __future__ import annotations

import copy
from pathlib import Path

from perceptsr.reproduce.common import (
    common_stages,
    evaluate_models,
    paper_config,
    perceptual_section,
    psnr_config,
    run_sections,
)
from perceptsr.reproduce.data import SCALE, niqe_metric
from perceptsr.reproduce.graph import Ablation, SeedContext, SeedStage, seed_contexts, seed_plan
from perceptsr.reproduce.profiles import RankSRGANProfile
from perceptsr.reproduce.runner import Runner, Stage, loop_section, train_stage

__all__ = ["METHODS", "plan", "gan_configs", "ranker_config", "ranker_accuracy_at", "summarise", "results_table", "ranker_table",
           "write_report"]

#: summary key -> model name in the results and report (the runs carry the same names)
METHODS = {"psnr": "PSNR", "srgan": "SRGAN", "ranksrgan": "RankSRGAN"}
RANKER_METRICS = ("accuracy", "hard_accuracy", "srocc", "kendall")


def gan_configs(profile: RankSRGANProfile, data: dict, assets: dict, seed: int, psnr_model: str, d_init: str,
                ranker: str | None) -> tuple[dict, dict]:
    """(SRGAN control, RankSRGAN) configs: identical except ``objective.type`` and ``objective.rank``.

    ``ranker`` may be None before the Ranker exists (the RankSRGAN config is then incomplete)."""
    rank = {"checkpoint": ranker, "weight": profile.rank_weight, "bn_mode": profile.rank_bn_mode,
            "floor": profile.rank_floor}
    paper = paper_config(profile, "ranksrgan")
    if paper is not None:
        base = copy.deepcopy(paper)
        base["seed"] = seed
        base["model"]["pretrained"] = psnr_model
        base["objective"]["discriminator"]["pretrained"] = d_init
        rank = {**base["objective"].pop("rank"), "checkpoint": ranker}
    else:
        g = profile.gan
        milestones = sorted({max(1, int(round(f * g.iterations))) for f in g.halve_at})
        base = {
            **run_sections(profile, data, seed, g, ["psnr", "ssim", niqe_metric(assets)], pretrained=psnr_model),
            "objective": {
                "pixel_weight": g.pixel_weight,
                "perceptual": perceptual_section(assets),
                "gan_type": "vanilla", "gan_weight": g.gan_weight,
                "discriminator": {"arch": "vgg_discriminator", "pretrained": d_init,
                                  "kwargs": {"num_feat": g.disc_feat, "input_size": g.patch_size}},
            },
            "optim": {"type": "adam", "lr": g.lr, "betas": [0.9, 0.999]},
            "schedule": {"type": "multistep", "milestones": milestones, "gamma": 0.5},
            "train": loop_section(g.iterations, g.val_points),
        }
    srgan = copy.deepcopy(base)
    srgan["objective"]["type"] = "gan"
    ranksrgan = copy.deepcopy(base)
    ranksrgan["objective"].update({"type": "ranksrgan", "rank": rank})
    return srgan, ranksrgan


def ranker_config(profile: RankSRGANProfile, rank_dir: str, seed: int) -> dict:
    paper = paper_config(profile, "ranker")
    if paper is not None:
        out = copy.deepcopy(paper)
        out["seed"] = seed
        out["objective"]["rank_dir"] = rank_dir
        return out
    r = profile.ranker
    return {
        "seed": seed, "scale": 1,
        "model": {"arch": "ranker", "kwargs": {"in_nc": 3, "nf": r.nf, "depth": r.depth}},
        "data": {"train": {"batch_size": r.batch_size, "num_workers": 0, "patch_size": profile.rank_data.patch_size}},
        "objective": {"type": "ranker", "rank_dir": rank_dir, "loss": "margin", "margin": 0.5, "clamp": 5.0,
                      "swap_order": r.swap_order, "crop": r.crop, "val_batch_size": 8, "best_metric": "accuracy"},
        "optim": {"type": "adam", "lr": r.lr, "betas": [0.9, 0.999], "weight_decay": 1e-4},
        "schedule": {"type": "multistep", "milestones": [max(1, r.iterations * 2 // 3)], "gamma": 0.5},
        "train": loop_section(r.iterations, r.val_points),
    }


def _initial_discriminator(config: dict, path: Path, seed: int) -> str:
    """The discriminator both GAN runs start from, built once from ``seed`` (global RNG untouched)."""
    import torch

    from perceptsr.checkpoint import save_model
    from perceptsr.config import ModelConfig, config_from_dict
    from perceptsr.train.networks import build_discriminator

    if not path.is_file():
        d = {k: v for k, v in config["objective"]["discriminator"].items() if k != "pretrained"}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net, arch, kwargs = build_discriminator(config_from_dict(ModelConfig, d), config["data"]["train"]["patch_size"])
        save_model(path, net, arch=arch, arch_kwargs=kwargs, extra={"reproduce": {"seed": seed, "role": "initial D"}})
    return str(path)


def _data(ctx: SeedContext) -> dict:
    return ctx.runner.done("common/data")


def _assets(ctx: SeedContext) -> dict:
    return ctx.runner.done("common/assets")


def _gan_configs(ctx: SeedContext, ranker: str | None = None) -> tuple[dict, dict]:
    d_init = str(ctx.runner.out / ctx.keys["srgan"] / "net_d_init.safetensors")
    return gan_configs(ctx.profile, _data(ctx), _assets(ctx), ctx.seed, ctx.done("psnr")["model"], d_init, ranker)


def _train(ctx: SeedContext, config: dict, folder: Path, stage: str, name: str) -> dict:
    return train_stage(config, folder, name, ctx.command(stage), ctx.runner.progress)


def _psnr(ctx: SeedContext, folder: Path) -> dict:
    return _train(ctx, psnr_config(ctx.profile, _data(ctx), ctx.seed), folder, "psnr", METHODS["psnr"])


def _srgan(ctx: SeedContext, folder: Path) -> dict:
    config, _ = _gan_configs(ctx)
    _initial_discriminator(config, Path(config["objective"]["discriminator"]["pretrained"]), ctx.seed)
    return _train(ctx, config, folder, "srgan", METHODS["srgan"])


def _rank_data(ctx: SeedContext, folder: Path) -> dict:
    return build_levels(ctx.profile, _data(ctx), _assets(ctx), ctx.done("srgan")["model"], ctx.done("psnr")["model"],
                        folder, ctx.seed, ctx.runner)


def _ranker(ctx: SeedContext, folder: Path) -> dict:
    """The Ranker, plus its held-out accuracy on centre crops of the GAN patch size: the input the
    rank-content loss gives it (``gan_patch_accuracy``)."""
    result = _train(ctx, ranker_config(ctx.profile, ctx.done("rank_data")["dataset"], ctx.seed), folder, "ranker",
                    "Ranker")
    gan_patch = _gan_configs(ctx)[1]["data"]["train"]["patch_size"]
    result["gan_patch_accuracy"] = ranker_accuracy_at(result["model"], ctx.done("rank_data")["dataset"], gan_patch)
    return result


def ranker_accuracy_at(ranker: str, rank_dir: str, size: int) -> float:
    """Within-location accuracy of the Ranker file on the valid split's centre ``size`` crops."""
    from perceptsr.checkpoint import load_model
    from perceptsr.ranksrgan import RankGroups, evaluate_ranker

    model = load_model(ranker)
    return evaluate_ranker(model, RankGroups(rank_dir, "valid"), "cpu", crop=size)["crop_accuracy"]


def _ranksrgan(ctx: SeedContext, folder: Path) -> dict:
    _, config = _gan_configs(ctx, ctx.done("ranker")["model"])
    return _train(ctx, config, folder, "ranksrgan", METHODS["ranksrgan"])


def _evaluation(ctx: SeedContext, folder: Path) -> dict:
    """The trained models of this plan (an ablation: only those it retrained; the rest are the seed's)."""
    models = {name: ctx.done(key)["model"] for key, name in METHODS.items() if key in ctx.fresh}
    return evaluate_models(models, ctx.runner, folder, save_images=ctx.first_seed and ctx.ablation is None)


#: one seed's stages; ``reads`` / ``after`` say what an ablation must run again (:mod:`.graph`)
SEED_STAGES = [
    SeedStage("psnr", "PSNR pre-training", _psnr, reads=("generator", "psnr")),
    SeedStage("srgan", "SRGAN control from the PSNR model", _srgan, reads=("generator", "gan"), after=("psnr",)),
    SeedStage("rank_data", "rank dataset: HR / SRGAN / PSNR / bicubic patches labelled with NIQE", _rank_data,
              reads=("rank_data", "workers"), after=("psnr", "srgan")),
    SeedStage("ranker", "Ranker on the rank dataset", _ranker, reads=("ranker", "gan.patch_size"), after=("rank_data",)),
    SeedStage("ranksrgan", "RankSRGAN from the same PSNR model", _ranksrgan,
              reads=("generator", "gan", "rank_weight", "rank_bn_mode", "rank_floor"), after=("psnr", "srgan", "ranker")),
    SeedStage("eval", "evaluation (PSNR/SSIM sr-y, NIQE pirm, LPIPS)", _evaluation,
              after=("psnr", "srgan", "ranksrgan")),
]


def plan(runner: Runner, profile: RankSRGANProfile, seeds: list[int], ablations: list[Ablation] = ()) -> list[Stage]:
    """The stages of ``seeds`` in order (common ones first), each seed's ablations after it."""
    return common_stages(runner, profile) + seed_plan(runner, profile, seeds, SEED_STAGES, list(ablations))


def build_levels(profile: RankSRGANProfile, data: dict, assets: dict, srgan_model: str, psnr_model: str,
                 folder: Path, seed: int, runner: Runner) -> dict:
    """The seed's rank dataset: the profile's levels of HR (the training images) > SRGAN > PSNR > bicubic,
    each SR level made from the training LR, labelled with the run's NIQE; returns its counts and
    label consistency."""
    from perceptsr.ranksrgan import RankDataOptions, RankLevel, build_rank_dataset, prepare_level

    r = profile.rank_data
    lr_dir = data["train_lr"]
    sources = {"srgan": srgan_model, "psnr": psnr_model, "bicubic": "bicubic"}
    levels = [RankLevel("hr", data["train_hr"], hr=True) if name == "hr" else
              prepare_level(name, sources[name], lr_dir, folder, scale=SCALE, progress=runner.progress)
              for name in r.levels]
    options = RankDataOptions(patch_size=r.patch_size, stride=r.stride, max_patches=r.max_patches,
                              valid_fraction=r.valid_fraction, split_by=r.split_by,
                              texture_threshold=r.texture_threshold, texture_level=r.texture_level,
                              gap_levels=tuple(r.gap_levels), min_gap=r.min_gap, metric=niqe_metric(assets),
                              seed=seed, scale=SCALE)
    summary = build_rank_dataset(levels, folder / "dataset", options, workers=profile.workers, device="cpu"
                                 if profile.workers else None, progress=runner.progress)
    return {"dataset": str(folder / "dataset"), "levels": [lv.name for lv in levels],
            "triplets": summary["triplets"], "filters": summary["filters"],
            "consistency": summary.get("consistency")}


# ------------------------------------------------------------------------------------------------
# summary and report


def _diff(a, b):
    return None if a is None or b is None else a - b


def _ranker_metrics(done: dict) -> dict:
    """The Ranker's held-out scores at its last iteration: the four required ones, then any other
    the objective logs (e.g. per-location SROCC / Kendall)."""
    val = {k.split("/", 1)[1]: v for k, v in done["val"].items() if k.startswith("val/")}
    val["gan_patch_accuracy"] = done.get("gan_patch_accuracy")
    return {**{k: val.get(k) for k in RANKER_METRICS}, **{k: v for k, v in val.items() if k not in RANKER_METRICS}}


def _seed_entry(ctx: SeedContext) -> dict:
    from perceptsr.reproduce.summary import REPORTED

    datasets = {}
    for ds, models in ctx.metric_table().items():
        entry = {key: models.get(name) for key, name in METHODS.items()}
        entry["ranksrgan_minus_srgan"] = {k: _diff(entry["ranksrgan"][k], entry["srgan"][k]) for k in REPORTED}
        datasets[ds] = entry
    rank = ctx.done("rank_data")
    return {"ranker": _ranker_metrics(ctx.done("ranker")),
            "rank_data": {"triplets": rank["triplets"], "filters": rank["filters"], "consistency": rank["consistency"]},
            "datasets": datasets}


def _seed_table(contexts: list[SeedContext]) -> dict:
    """``per_seed`` (finished seeds), ``mean``, ``std`` and the NIQE win count of one plan."""
    from perceptsr.reproduce.summary import aggregate

    per_seed = {str(c.seed): _seed_entry(c) for c in contexts if c.done("eval") is not None}
    mean, std = aggregate(list(per_seed.values()))
    lower: dict[str, int] = {}
    for entry in per_seed.values():
        for ds, d in entry["datasets"].items():
            delta = d["ranksrgan_minus_srgan"]["niqe"]
            lower[ds] = lower.get(ds, 0) + int(delta is not None and delta < 0)
    return {"per_seed": per_seed, "mean": mean, "std": std,
            "ranksrgan_niqe_lower_than_srgan": {ds: f"{k} of {len(per_seed)} seeds" for ds, k in lower.items()}}


def summarise(runner: Runner, profile: RankSRGANProfile, seeds: list[int], ablations: list[Ablation] = ()) -> dict:
    """The ``summary.json`` body: per finished seed, then mean and std over them; the same for each
    ablation (``ablations.<label>``, with the stages it reran)."""
    from perceptsr.reproduce.graph import rerun
    from perceptsr.reproduce.summary import metric_table

    own = _seed_table(seed_contexts(runner, profile, seeds, SEED_STAGES))
    per_seed = own["per_seed"]
    assets, data = runner.done("common/assets"), runner.done("common/data")
    bicubic = runner.done("common/bicubic")
    return {
        "seeds_done": [int(s) for s in per_seed],
        "complete": len(per_seed) == len(seeds),
        "niqe_model": assets["niqe"]["model"],
        "vgg": assets["vgg"]["about"],
        "lpips": "LPIPS-alex v0.1 (sr-rgb: RGB, crop 4)" if assets["lpips_available"] else "not available (no weights)",
        "evaluation": {"datasets": data["eval"], "protocols": runner.done(f"seed_{min(int(s) for s in per_seed)}/eval")
                       ["metric_protocols"] if per_seed else None, "notes": data["notes"]},
        **own,
        "baselines": {"bicubic": {ds: m.get("bicubic") for ds, m in metric_table(bicubic["results"]).items()}},
        "ablations": {a.label: {"overrides": a.overrides, "reruns": rerun(SEED_STAGES, a.overrides),
                                **_seed_table(seed_contexts(runner, profile, seeds, SEED_STAGES, a))}
                      for a in ablations},
    }


def results_table(body: dict) -> tuple[list[str], list[list[str]]]:
    """(headers, rows): mean ± std over seeds of each model and the bicubic baseline, per dataset."""
    from perceptsr.reproduce.figures import mean_pm

    mean, std = body["mean"], body["std"]
    rows = []
    for ds in mean.get("datasets", {}):
        for key, name in METHODS.items():
            m, s = mean["datasets"][ds].get(key, {}), std["datasets"][ds].get(key, {})
            rows.append([ds, name] + [mean_pm(m.get(k), s.get(k), 2 if k == "psnr" else 4)
                                      for k in ("psnr", "ssim", "niqe", "lpips")])
        b = body["baselines"]["bicubic"].get(ds) or {}
        rows.append([ds, "bicubic"] + [mean_pm(b.get(k), None, 2 if k == "psnr" else 4)
                                       for k in ("psnr", "ssim", "niqe", "lpips")])
    return ["dataset", "model", "PSNR (dB)", "SSIM", "NIQE", "LPIPS"], rows


def ranker_table(body: dict) -> tuple[list[str], list[list[str]]]:
    """(headers, one row): the Ranker's held-out scores, mean ± std over seeds."""
    from perceptsr.reproduce.figures import mean_pm

    r, rs = body["mean"].get("ranker", {}), body["std"].get("ranker", {})
    columns = {"accuracy": "within-location accuracy", "hard_accuracy": "hard-pair accuracy", "srocc": "SROCC",
               "kendall": "Kendall", "location_srocc": "per-location SROCC", "location_kendall": "per-location Kendall",
               "crop_accuracy": "accuracy on crops (its training crop)",
               "gan_patch_accuracy": "accuracy on GAN-patch-size crops"}
    shown = [k for k in columns if k in r]
    return [columns[k] for k in shown], [[mean_pm(r.get(k), rs.get(k), 3) for k in shown]]


def _ablation_table(body: dict) -> str:
    """One row per plan (the profile's own, then each ablation) and dataset: RankSRGAN's metrics,
    its difference to the control, the seeds where its NIQE is lower, and the Ranker's accuracy."""
    from perceptsr.reproduce.figures import mean_pm, table_html

    plans = {"(profile)": {"reruns": [], **body}, **body["ablations"]}
    rows = []
    for label, t in plans.items():
        mean, std = t["mean"], t["std"]
        for ds in mean.get("datasets", {}):
            m, s = mean["datasets"][ds]["ranksrgan"], std["datasets"][ds]["ranksrgan"]
            d, ds_ = mean["datasets"][ds]["ranksrgan_minus_srgan"], std["datasets"][ds]["ranksrgan_minus_srgan"]
            rows.append([label, ", ".join(t["reruns"]) or "-", ds,
                         mean_pm(m.get("psnr"), s.get("psnr"), 2), mean_pm(m.get("niqe"), s.get("niqe"), 3),
                         mean_pm(d.get("psnr"), ds_.get("psnr"), 2), mean_pm(d.get("niqe"), ds_.get("niqe"), 3),
                         t["ranksrgan_niqe_lower_than_srgan"].get(ds, ""),
                         mean_pm(mean.get("ranker", {}).get("accuracy"), std.get("ranker", {}).get("accuracy"), 3)])
    return table_html(["plan", "stages rerun", "dataset", "RankSRGAN PSNR", "RankSRGAN NIQE", "Δ PSNR vs SRGAN",
                       "Δ NIQE vs SRGAN", "NIQE lower", "Ranker accuracy"], rows)


def write_report(runner: Runner, body: dict, path: Path) -> Path:
    """``report.html``: tables, PD planes (per-seed points and means) and the validation curves."""
    from perceptsr.reproduce.figures import curve_figure, pd_figure, table_html, write_page

    stem = path.with_suffix("")
    sections: list[tuple[str, str | bytes]] = []
    per_seed, mean = body["per_seed"], body["mean"]
    intro = (f"<p class=\"muted\">Seeds finished: {body['seeds_done']}. NIQE: {body['niqe_model']}; perceptual loss: "
             f"{body['vgg']}; LPIPS: {body['lpips']}. Mean ± sample std over seeds.</p>")
    sections.append(("Results", intro + table_html(*results_table(body))))
    sections.append(("Ranker on the held-out rank patches", table_html(*ranker_table(body))))
    if body.get("ablations"):
        sections.append(("Ablations (each against the same seed's SRGAN control)", _ablation_table(body)))
    for metric in ("niqe", "lpips"):
        points = {}
        for ds in mean.get("datasets", {}):
            points[ds] = {name: [(e["datasets"][ds][key]["psnr"], e["datasets"][ds][key][metric])
                                 for e in per_seed.values() if ds in e["datasets"]]
                          for key, name in METHODS.items()}
            b = body["baselines"]["bicubic"].get(ds) or {}
            points[ds]["bicubic"] = [(b.get("psnr"), b.get(metric))]
        png = pd_figure(points, metric, stem.with_name(f"{stem.name}_pd_{metric}.png"))
        if png is not None:
            sections.append((f"Perception-distortion plane (PSNR vs {metric.upper()})", png))
    runs = {name: [Path(runner.done(f"seed_{s}/{key}")["run_dir"]) / "tb" for s in body["seeds_done"]]
            for key, name in METHODS.items() if key != "psnr"}
    png = curve_figure(runs, [("val/niqe", "NIQE ↓"), ("val/psnr", "PSNR (dB) ↑")], stem.with_name(f"{stem.name}_curves.png"))
    if png is not None:
        sections.append(("Validation curves of the two runs (same init, data order and iterations)", png))
    return write_page(path, f"perceptsr reproduce ranksrgan ({runner.profile})", sections)
