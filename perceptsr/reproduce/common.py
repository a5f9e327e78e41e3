"""What both experiments share: the common stages (images, assets, the bicubic baseline), model
evaluation on the profile's sets, and the config pieces (PSNR pre-training, validation, perceptual
loss, a ``configs/paper`` file for the ``paper`` profile)."""

from __future__ import annotations

from pathlib import Path

from perceptsr.reproduce.data import SCALE, niqe_metric, prepare_assets, prepare_data
from perceptsr.reproduce.profiles import SAMPLES
from perceptsr.reproduce.runner import Runner, Stage, loop_section

__all__ = ["common_stages", "evaluate_models", "paper_config", "perceptual_section", "psnr_config", "val_section"]


def common_stages(runner: Runner, profile) -> list[Stage]:
    """``common/data``, ``common/assets`` and ``common/bicubic`` (the bicubic baseline, scored once)."""
    return [
        Stage("common/data", "training, validation and evaluation images",
              lambda d: prepare_data(profile.data, d, runner.say)),
        Stage("common/assets", "NIQE model and VGG19 weights",
              lambda d: prepare_assets(runner.done("common/data")["train_hr"], profile.vgg, d, runner.say,
                                       samples=profile.data.train == SAMPLES)),
        Stage("common/bicubic", "bicubic baseline on the evaluation sets",
              lambda d: evaluate_models({"bicubic": "bicubic"}, runner, d, save_images=False)),
    ]


def evaluate_models(models: dict, runner: Runner, folder: Path, *, save_images: bool) -> dict:
    """Score ``models`` (name -> checkpoint or module) on the evaluation sets: PSNR/SSIM on Y
    (``sr-y``), LPIPS on RGB, NIQE under ``pirm`` (the ``validation`` protocol's per-metric rule);
    the results files go to ``folder``."""
    from perceptsr.evaluation import DatasetSpec, evaluate, write_results

    data, assets = runner.done("common/data"), runner.done("common/assets")
    metrics = ["psnr", "ssim", niqe_metric(assets)] + (["lpips"] if assets["lpips_available"] else [])
    specs = [DatasetSpec(e["name"], Path(e["hr_dir"]), None if e["lr_dir"] is None else Path(e["lr_dir"]))
             for e in data["eval"]]
    results = evaluate(models, specs, metrics=metrics, protocol="validation", scale=SCALE, tile=None,
                       save_images=folder / "images" if save_images else None, progress=runner.progress)
    files = write_results(results, folder)
    return {"results": str(files["results.json"]), "table": str(files["results.md"]),
            "metric_protocols": {n: i["protocol"] for n, i in results["metric_info"].items()},
            "means": {f"{s['dataset']}/{s['model']}": s["mean"] for s in results["summary"]}}


def val_section(data: dict, metrics: list[str]) -> dict:
    """``data.val``: the profile's validation images, one logged crop, ``metrics``."""
    val = data["val"]
    return {"hr_dir": val["hr_dir"], "lr_dir": val["lr_dir"], "log_images": 1, "metrics": metrics}


def run_sections(profile, data: dict, seed: int, stage, val_metrics: list[str], pretrained: str | None = None) -> dict:
    """The sections every profile-built run shares: seed, scale, the profile's generator (initialised
    from ``pretrained`` if given) and ``data`` with ``stage``'s patch and batch size."""
    model = {"arch": profile.generator.arch, "kwargs": dict(profile.generator.kwargs)}
    if pretrained is not None:
        model["pretrained"] = pretrained
    train = {"hr_dir": data["train_hr"], "patch_size": stage.patch_size, "batch_size": stage.batch_size,
             "num_workers": 0, "cache": True}
    return {"seed": seed, "scale": SCALE, "model": model,
            "data": {"train": train, "val": val_section(data, val_metrics)}}


def perceptual_section(assets: dict) -> dict:
    """VGG19-54 feature L1 with the weights found offline (Caffe weights get weight 1/58: see data.py)."""
    vgg = assets["vgg"]
    return {"weight": vgg["feature_weight"], "layer_weights": {"conv5_4": 1.0}, "weights": vgg["weights"]}


def paper_config(profile, stage: str) -> dict | None:
    """The raw ``configs/paper`` mapping of ``stage`` for the ``paper`` profile, else None."""
    from perceptsr.config import load_yaml

    if not profile.paper_configs:
        return None
    return load_yaml(profile.paper_configs[stage])


def psnr_config(profile, data: dict, seed: int) -> dict:
    """PSNR pre-training of the profile's generator (L1, Adam, one cosine period, optional EMA)."""
    paper = paper_config(profile, "psnr")
    if paper is not None:
        return {**paper, "seed": seed}
    p = profile.psnr
    return {
        **run_sections(profile, data, seed, p, ["psnr", "ssim"]),
        "objective": {"type": "psnr", "loss": "l1"},
        "optim": {"type": "adam", "lr": p.lr, "betas": [0.9, 0.99]},
        "schedule": {"type": "cosine", "periods": [p.iterations], "restart_weights": [1.0], "eta_min": p.lr / 100},
        "train": loop_section(p.iterations, p.val_points, ema_decay=p.ema_decay),
    }
