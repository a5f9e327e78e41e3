"""``perceptsr demo``: the whole system at CPU scale on images that ship with scikit-image.

Stages (each writes under ``OUT/<stage>/`` and a ``done.json`` marker, so a re-run skips what is
finished and an interrupted demo continues):

1. ``data``: sample photos as HR PNGs (``train/HR``, ``test/HR``), or the user's ``--data`` folder;
2. ``niqe``: the official NIQE pristine model when the asset is available locally, otherwise a model
   fitted on the training HR images with LIVE's ``estimatemodelparam`` procedure (said so loudly);
3. ``psnr``: PSNR pre-training of a small MSRResNet x4;

and, as the methods land, the GAN model, the rank dataset, the Ranker, RankSRGAN, EA-Adam with
fusion, evaluation and the HTML report.

Everything is tiny on purpose: the models are illustrations of the pipeline, not the papers'
results. Nothing here needs the network or ``../shared``.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from perceptsr.errors import ImageReadError

__all__ = ["SAMPLE_TRAIN", "SAMPLE_TEST", "DemoContext", "STAGES", "run_demo"]

# scikit-image's bundled photos (no download). Grey ones are replicated to RGB.
SAMPLE_TRAIN = (
    "astronaut", "rocket", "hubble_deep_field", "immunohistochemistry", "retina",
    "camera", "brick", "grass", "gravel", "moon",
)
SAMPLE_TEST = ("coffee", "chelsea")
SCALE = 4
HONEST_NOTE = (
    "Note: these CPU-scale models train for minutes on a handful of images. They illustrate the "
    "pipeline end to end; they are not the papers' results (which need GPUs, DIV2K-scale data and "
    "hundreds of thousands of iterations; see docs/)."
)


@dataclass
class DemoContext:
    """Where everything lives and what earlier stages produced (paths recorded in ``done.json``)."""

    out: Path
    data: Path | None = None
    iterations_scale: float = 1.0  # multiply every stage's iteration count (tests use a small value)
    progress: bool = True
    results: dict[str, dict] = field(default_factory=dict)
    notes: set[str] = field(default_factory=set)  # one-off notes already printed

    def stage_dir(self, name: str) -> Path:
        return self.out / name

    def iterations(self, n: int) -> int:
        return max(2, int(round(n * self.iterations_scale)))

    def say(self, message: str) -> None:
        print(f"[demo] {message}", flush=True)

    def say_once(self, key: str, message: str) -> None:
        if key not in self.notes:
            self.notes.add(key)
            self.say(message)


# ------------------------------------------------------------------------------------------------
# stage 1: data


def _sample_image(name: str) -> np.ndarray:
    from skimage import data as skdata

    img = np.asarray(getattr(skdata, name)())
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    return img[..., :3]


def _write_png(path: Path, img: np.ndarray) -> None:
    from perceptsr.data.io import write_image

    write_image(path, img.astype(np.float32) / 255.0 if img.dtype == np.uint8 else img)


def stage_data(ctx: DemoContext) -> dict:
    """HR training and test folders: scikit-image samples, or the user's images split 80/20."""
    from perceptsr.data.color import modcrop
    from perceptsr.data.io import list_images, read_image

    root = ctx.stage_dir("data")
    train_dir, test_dir = root / "train" / "HR", root / "test" / "HR"
    train_dir.mkdir(parents=True, exist_ok=True)
    test_dir.mkdir(parents=True, exist_ok=True)
    if ctx.data is None:
        for names, folder in ((SAMPLE_TRAIN, train_dir), (SAMPLE_TEST, test_dir)):
            for name in names:
                _write_png(folder / f"{name}.png", modcrop(_sample_image(name), SCALE))
        source = "scikit-image sample images"
    else:
        files = list_images(ctx.data)
        if len(files) < 3:
            raise ImageReadError(f"{ctx.data}: the demo needs at least 3 images (found {len(files)})")
        n_test = max(1, len(files) // 5)
        for i, path in enumerate(files):
            img = modcrop(read_image(path)[..., :3], SCALE)
            if min(img.shape[:2]) < 128:
                raise ImageReadError(f"{path}: {img.shape[1]}x{img.shape[0]} is too small for the demo (needs >= 128 px)")
            folder = test_dir if i >= len(files) - n_test else train_dir
            _write_png(folder / f"{path.stem}.png", img)
        source = str(ctx.data)
    return {"train_hr": str(train_dir), "test_hr": str(test_dir), "source": source,
            "train_images": len(list_images(train_dir)), "test_images": len(list_images(test_dir))}


# ------------------------------------------------------------------------------------------------
# stage 2: the NIQE model


def stage_niqe(ctx: DemoContext) -> dict:
    """Official LIVE parameters when available offline, else a model fitted on the training HR."""
    from perceptsr.assets import find_local

    official = find_local("niqe_params") or find_local("niqe_params_npz")
    if official is not None:
        return {"params_path": str(official), "official": True}
    from perceptsr.data.color import rgb2gray
    from perceptsr.data.io import list_images, read_image
    from perceptsr.metrics.niqe import fit_niqe_params

    ctx.say("NIQE: the official pristine model is not available offline; fitting one on the training "
            "HR images (LIVE estimatemodelparam procedure). NIQE values are then comparable within "
            "this demo only, not with papers.")
    grey = [np.round(rgb2gray(np.round(read_image(p)[..., :3] * 255) / 255) * 255)
            for p in list_images(ctx.results["data"]["train_hr"])]
    mu, cov = fit_niqe_params(grey)
    path = ctx.stage_dir("niqe") / "niqe_demo_params.npz"
    np.savez(path, mu_pris_param=mu, cov_pris_param=cov)
    return {"params_path": str(path), "official": False}


# ------------------------------------------------------------------------------------------------
# stage 3: PSNR pre-training


def _loop(iterations: int, *, ema_decay: float = 0.0, log_times: int = 8) -> dict:
    """The ``train`` section of a demo stage: validate and save once, at the end."""
    return {"iterations": iterations, "ema_decay": ema_decay, "log_every": max(1, iterations // log_times),
            "val_every": iterations, "save_every": iterations, "keep_last": 1}


def _train(ctx: DemoContext, name: str, config: dict) -> dict:
    """Run one engine training under ``OUT/<name>/`` (resuming if interrupted); return its files."""
    from perceptsr.config import TrainConfig, config_from_dict
    from perceptsr.train.engine import train
    from perceptsr.train.objectives import objective_class

    config = {"name": "run", "output_root": str(ctx.stage_dir(name)), **config}
    cfg = config_from_dict(TrainConfig, config)
    result = train(cfg, resume=True, command=f"perceptsr demo (stage {name})", progress=ctx.progress)
    trained = objective_class(cfg.objective.type).trained_network
    return {"run_dir": str(result.run_dir), "checkpoint": str(result.last_checkpoint),
            "generator": str(result.last_checkpoint / f"{trained}.safetensors"),
            "val": {k: round(v, 4) for k, v in result.val_metrics.items()}}


def _small_generator() -> dict:
    return {"arch": "msrresnet", "kwargs": {"num_feat": 32, "num_block": 4}}


def stage_psnr(ctx: DemoContext) -> dict:
    data = ctx.results["data"]
    iterations = ctx.iterations(800)
    result = _train(ctx, "psnr", {
        "scale": SCALE,
        "model": _small_generator(),
        "data": {
            "train": {"hr_dir": data["train_hr"], "patch_size": 64, "batch_size": 8, "num_workers": 0,
                      "cache": True},
            "val": {"hr_dir": data["test_hr"], "log_images": 2},
        },
        "objective": {"type": "psnr", "loss": "l1"},
        "optim": {"type": "adam", "lr": 1e-3, "betas": [0.9, 0.99]},
        "schedule": {"type": "cosine", "periods": [iterations], "restart_weights": [1.0], "eta_min": 1e-6},
        "train": _loop(iterations, ema_decay=0.99),
    })
    result["models"] = {"PSNR (MSRResNet)": result["generator"]}
    return result


# ------------------------------------------------------------------------------------------------
# stages 4-7: RankSRGAN (GAN level, rank dataset, Ranker, RankSRGAN)


def _vgg_weights(ctx: DemoContext) -> tuple[str | None, float]:
    """Perceptual-loss VGG weights available offline and the feature weight that goes with them.

    Caffe VGG takes 0..255 input without std division: its features are ~58x torchvision's, so its
    weight is 1/58 to keep the papers' balance. Without either file the VGG is random (said once).
    """
    from perceptsr.assets import find_local

    if find_local("vgg19") is not None:
        return "torchvision", 1.0
    if find_local("vgg19_caffe") is not None:
        return "caffe", 0.017
    ctx.say_once("vgg", "VGG19 weights are not available offline: the perceptual loss uses a fixed random "
                 "VGG19 (set PERCEPTSR_ASSETS to use ImageNet weights).")
    return None, 1.0


def _gan_config(ctx: DemoContext, objective: dict, iterations: int) -> dict:
    data = ctx.results["data"]
    weights, feature_weight = _vgg_weights(ctx)
    return {
        "scale": SCALE,
        "model": {**_small_generator(), "pretrained": ctx.results["psnr"]["generator"]},
        "data": {
            "train": {"hr_dir": data["train_hr"], "patch_size": 64, "batch_size": 8, "num_workers": 0, "cache": True},
            "val": {"hr_dir": data["test_hr"], "log_images": 2, "metrics": ["psnr", "ssim", niqe_metric_name(ctx)]},
        },
        "objective": {
            "perceptual": {"weight": feature_weight, "layer_weights": {"conv5_4": 1.0}, "weights": weights},
            "gan_type": "vanilla", "gan_weight": 5e-3,
            "discriminator": {"arch": "vgg_discriminator", "kwargs": {"num_feat": 32, "input_size": 64}},
            **objective,
        },
        "optim": {"type": "adam", "lr": 1e-4, "betas": [0.9, 0.99]},
        "schedule": {"type": "multistep", "milestones": [iterations // 2], "gamma": 0.5},
        "train": _loop(iterations),
    }


def stage_gan(ctx: DemoContext) -> dict:
    """SRGAN objective from the PSNR model: the perceptual rank level and the baseline."""
    result = _train(ctx, "gan", _gan_config(ctx, {"type": "gan", "pixel_weight": 1e-2}, ctx.iterations(120)))
    result["models"] = {"SRGAN": result["generator"]}
    return result


def _training_lr(ctx: DemoContext) -> Path:
    """MATLAB-bicubic x4 LR of the training HR images (the rank levels are SR outputs of these)."""
    from perceptsr.data.imresize import imresize
    from perceptsr.data.io import list_images, read_image, write_image

    lr_dir = ctx.stage_dir("data") / "train" / f"LR_bicubic_X{SCALE}"
    for path in list_images(ctx.results["data"]["train_hr"]):
        target = lr_dir / path.name
        if not target.is_file():
            write_image(target, np.clip(imresize(read_image(path, mode="rgb"), 1 / SCALE), 0, 1))
    return lr_dir


def stage_rank_data(ctx: DemoContext) -> dict:
    """Levels HR > GAN > PSNR > bicubic on the training images (the paper's RankSRGAN-HR variant),
    patches labelled with NIQE.

    Minutes-old models make smooth outputs and near-identical GAN/PSNR levels, so the texture filter
    looks at the HR patch and the gap filter compares the GAN level with bicubic (the paper: the best
    SR level, and the two best SR levels).
    """
    from perceptsr.ranksrgan import RankDataOptions, RankLevel, build_rank_dataset, prepare_level

    out = ctx.stage_dir("rank_data")
    lr_dir = str(_training_lr(ctx))
    levels = [RankLevel("hr", ctx.results["data"]["train_hr"], hr=True)]
    levels += [prepare_level(name, source, lr_dir, out, scale=SCALE, progress=ctx.progress)
               for name, source in (("gan", ctx.results["gan"]["generator"]),
                                    ("psnr", ctx.results["psnr"]["generator"]), ("bicubic", "bicubic"))]
    options = RankDataOptions(patch_size=200, stride=100, max_patches=24, valid_fraction=0.25, split_by="image",
                              texture_level="hr", gap_levels=("gan", "bicubic"),
                              metric=niqe_metric_name(ctx), scale=SCALE)
    summary = build_rank_dataset(levels, out / "dataset", options, workers=2, progress=ctx.progress)
    return {"dataset": str(out / "dataset"), "summary": summary}


def stage_ranker(ctx: DemoContext) -> dict:
    iterations = ctx.iterations(150)
    result = _train(ctx, "ranker", {
        "model": {"arch": "ranker", "kwargs": {"in_nc": 3, "nf": 16, "depth": 12}},
        "data": {"train": {"batch_size": 8, "num_workers": 0, "patch_size": 200}},
        "scale": 1,
        "objective": {"type": "ranker", "rank_dir": ctx.results["rank_data"]["dataset"], "loss": "margin",
                      "margin": 0.5, "clamp": 5.0, "val_batch_size": 8},
        "optim": {"type": "adam", "lr": 1e-3, "betas": [0.9, 0.999], "weight_decay": 1e-4},
        "schedule": {"type": "multistep", "milestones": [iterations * 2 // 3], "gamma": 0.5},
        "train": _loop(iterations, log_times=6),
    })
    result["ranker"] = result.pop("generator")
    return result


def stage_ranksrgan(ctx: DemoContext) -> dict:
    """RankSRGAN from the same PSNR model, identical to the SRGAN stage except the rank-content term
    (same losses, weights, data order and iterations): the controlled comparison."""
    rank = {"checkpoint": ctx.results["ranker"]["ranker"], "weight": 0.03}
    config = _gan_config(ctx, {"type": "ranksrgan", "pixel_weight": 1e-2, "rank": rank}, ctx.iterations(120))
    result = _train(ctx, "ranksrgan", config)
    result["models"] = {"RankSRGAN": result["generator"]}
    return result


# ------------------------------------------------------------------------------------------------
# stages 8-9: EA-Adam (population training, fusion, collapse)


def _ea_common(ctx: DemoContext, iterations: int) -> dict:
    data = ctx.results["data"]
    weights, feature_weight = _vgg_weights(ctx)
    return {
        "scale": SCALE,
        "data": {
            "train": {"hr_dir": data["train_hr"], "patch_size": 64, "batch_size": 4, "num_workers": 0, "cache": True},
            "val": {"hr_dir": data["test_hr"], "log_images": 1},
        },
        "optim": {"type": "adam", "lr": 1e-4, "betas": [0.9, 0.999]},
        "schedule": {"type": "constant"},
        "train": _loop(iterations, log_times=6),
        "objective": {"perceptual": {"weight": feature_weight, "layer_weights": {"conv5_4": 1.0}, "weights": weights},
                      "gan_type": "vanilla", "gan_weight": 5e-3,
                      "discriminator": {"arch": "vgg_discriminator", "kwargs": {"num_feat": 16, "input_size": 64}}},
    }


def stage_ea_adam(ctx: DemoContext) -> dict:
    """Stage A: 3 generators (PSNR model frozen as member 0) with Adam and EA phases."""
    iterations = ctx.iterations(40)
    config = _ea_common(ctx, iterations)
    config["model"] = {**_small_generator(), "pretrained": ctx.results["psnr"]["generator"]}
    config["objective"].update({
        "type": "ea_adam", "population": 3, "freeze_first": True,
        # two EA phases (before iterations ~n/2 and n) of 3 generations on 100 patches of 2 images
        "t_adam": 1, "epoch_iterations": max(1, (iterations - 1) // 2), "t_ea": 3, "eval_images": 2,
        "eval_patch_size": 64, "eval_max_patches": 50, "plane_metric": None,
    })
    from perceptsr.ea_adam import discriminator_name, member_file, population_folder

    result = _train(ctx, "ea_adam", config)
    population = Path(result["run_dir"]) / population_folder()
    result.update({"population": str(population),
                   "discriminator": str(Path(result["checkpoint"]) / f"{discriminator_name(2)}.safetensors"),
                   "models": {f"EA-Adam member {i}": str(member_file(population, i)) for i in (1, 2)}})
    return result


def stage_fusion(ctx: DemoContext) -> dict:
    """Stages B and C: train the attention regressors, then collapse into one plain MSRResNet."""
    from perceptsr.fusion import fuse_run

    iterations = ctx.iterations(40)
    config = _ea_common(ctx, iterations)
    config["model"] = _small_generator()
    config["objective"].update({"type": "fusion", "experts": ctx.results["ea_adam"]["population"], "pixel_weight": 1e-2})
    config["objective"]["discriminator"]["pretrained"] = ctx.results["ea_adam"]["discriminator"]
    result = _train(ctx, "fusion", config)
    fused, weights_json, _ = fuse_run(result["checkpoint"], _training_lr(ctx), ctx.stage_dir("fusion") / "ea_adam_fused.safetensors",
                                      max_images=20)
    result.update({"fused": str(fused), "fusion_weights": str(weights_json), "models": {"EA-Adam fused": str(fused)}})
    return result


# ------------------------------------------------------------------------------------------------
# evaluation and report


def niqe_metric_name(ctx: DemoContext) -> str:
    """``niqe`` with the official model, else ``niqe-demo`` registered with the demo-fitted one."""
    info = ctx.results["niqe"]
    if info["official"]:
        return "niqe"
    from perceptsr.metrics import list_metrics, register_metric
    from perceptsr.metrics.niqe import NIQE

    if "niqe-demo" not in list_metrics():
        register_metric("niqe-demo", NIQE, params_path=info["params_path"])
    return "niqe-demo"


def demo_models(ctx: DemoContext) -> dict[str, str]:
    """Every generator the finished stages produced, by display name, in stage order."""
    models = {"bicubic": "bicubic"}
    for result in ctx.results.values():
        models.update(result.get("models", {}))
    return models


def stage_eval(ctx: DemoContext) -> dict:
    from perceptsr.evaluation import evaluate, write_results

    out = ctx.stage_dir("eval")
    metrics = ["psnr", "ssim", "lpips", niqe_metric_name(ctx)]
    results = evaluate(demo_models(ctx), [ctx.results["data"]["test_hr"]], metrics=metrics, protocol="sr-y",
                       scale=SCALE, tile=None, save_images=out / "images", progress=ctx.progress)
    files = write_results(results, out)
    ctx.say("results:\n" + files["results.md"].read_text(encoding="utf-8"))
    return {"results": str(files["results.json"]), "table": str(files["results.md"])}


def stage_report(ctx: DemoContext) -> dict:
    from perceptsr.report import build_report

    runs = [r["run_dir"] for r in ctx.results.values() if "run_dir" in r]
    html = build_report([ctx.results["eval"]["results"], *runs], ctx.out / "report.html")
    ctx.say(f"report: {html.resolve()}")
    return {"report": str(html)}


# ------------------------------------------------------------------------------------------------
# driver

STAGES: dict[str, tuple[str, Callable[[DemoContext], dict]]] = {
    "data": ("sample images", stage_data),
    "niqe": ("NIQE pristine model", stage_niqe),
    "psnr": ("PSNR pre-training (MSRResNet x4)", stage_psnr),
    "gan": ("SRGAN training from the PSNR model", stage_gan),
    "rank_data": ("rank dataset: HR / GAN / PSNR / bicubic patches labelled with NIQE", stage_rank_data),
    "ranker": ("Ranker (Siamese VGG-12, margin ranking)", stage_ranker),
    "ranksrgan": ("RankSRGAN: rank-content loss with the frozen Ranker", stage_ranksrgan),
    "ea_adam": ("EA-Adam stage A: population of 3 generators, Adam + EA phases", stage_ea_adam),
    "fusion": ("EA-Adam stages B and C: fusion network, collapsed into one plain model", stage_fusion),
    "eval": ("evaluation on the held-out images", stage_eval),
    "report": ("HTML report", stage_report),
}


def run_demo(out: str | Path = "demo_out", *, data: str | Path | None = None, iterations_scale: float = 1.0,
             progress: bool = True, stages: list[str] | None = None) -> DemoContext:
    """Run (or continue) every demo stage in order; returns the context with each stage's results."""
    os.environ.setdefault("PERCEPTSR_OFFLINE", "1")  # local assets only: the demo never downloads
    ctx = DemoContext(Path(out), Path(data) if data is not None else None, iterations_scale, progress)
    ctx.out.mkdir(parents=True, exist_ok=True)
    wanted = list(STAGES) if stages is None else stages
    unknown = [s for s in wanted if s not in STAGES]
    if unknown:
        raise ValueError(f"unknown demo stage(s) {unknown}; stages: {', '.join(STAGES)}")
    start = time.perf_counter()
    for index, name in enumerate(STAGES, 1):
        title, fn = STAGES[name]
        marker = ctx.stage_dir(name) / "done.json"
        if name not in wanted:
            if marker.is_file():  # later stages may need its results
                ctx.results[name] = json.loads(marker.read_text(encoding="utf-8"))
            continue
        if marker.is_file():
            ctx.results[name] = json.loads(marker.read_text(encoding="utf-8"))
            ctx.say(f"{index}/{len(STAGES)} {title}: already done ({marker.parent})")
            continue
        ctx.say(f"{index}/{len(STAGES)} {title} ...")
        t0 = time.perf_counter()
        ctx.stage_dir(name).mkdir(parents=True, exist_ok=True)
        result = fn(ctx)
        result["seconds"] = round(time.perf_counter() - t0, 1)
        ctx.results[name] = result
        tmp = marker.with_suffix(".tmp")
        tmp.write_text(json.dumps(result, indent=2), encoding="utf-8")
        tmp.replace(marker)
        ctx.say(f"{title}: done in {result['seconds']} s")
    ctx.say(f"all stages done in {time.perf_counter() - start:.0f} s; outputs under {ctx.out}")
    ctx.say(HONEST_NOTE)
    return ctx
