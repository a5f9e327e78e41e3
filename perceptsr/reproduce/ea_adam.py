"""``perceptsr reproduce ea-adam``: EA-Adam against weighted-sum Adam, then fusion and ``--tradeoff``.

Stages (``DIR/<key>/``, see :mod:`perceptsr.reproduce.runner`): ``common/data``, ``common/assets``,
``common/bicubic`` as for RankSRGAN, then per seed ``seed_<s>/``:

1. ``psnr``: PSNR pre-training (run ``PSNR``), the initialisation of every individual;
2. ``ea_adam``: the EA-Adam population (run ``EA-Adam``): normalised-gradient Adam plus EA phases;
3. ``ws_adam``: the weighted-sum Adam population (run ``weighted-sum Adam``): the *same* config
   except ``objective.adam_mode: weighted_sum`` (one backward of ``λ_d L1 + λ_p (VGG + w GAN)``, no
   normalisation) and no EA phase (``epoch_iterations`` past the last iteration). Same preference
   vectors, initialisation, seed (so data order and discriminator initialisation), iterations and
   so the same number of generator steps; the fitness evaluations the EA phases add are counted and
   reported (``budget``), weighted-sum Adam has none;
4. ``fusion``: stage B on EA-Adam's final population (run ``fusion``), then stage C
   (:func:`perceptsr.fusion.fuse_run`): one plain model, with the dynamic-vs-collapsed output gap;
5. ``eval``: every member of both populations, the fused model and the ``--tradeoff`` sweep
   (:func:`perceptsr.fusion.tradeoff.load_tradeoff_model` on the fused model) on the evaluation sets:
   PSNR/SSIM (``sr-y``), LPIPS, NIQE (``pirm``).

**Hypervolume** (:func:`hypervolume`) in the PSNR-LPIPS plane (PSNR maximised, LPIPS minimised),
per dataset, with one reference point fixed by the data, not by the models compared:
``(PSNR_bicubic - 1 dB, LPIPS_bicubic)`` of that dataset's bicubic baseline, so every model that
beats bicubic's LPIPS and is within 1 dB of its PSNR contributes. A population's set includes its
member 0 (the PSNR model), as both populations do.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

from perceptsr.reproduce.common import (
    common_stages,
    evaluate_models,
    paper_config,
    perceptual_section,
    psnr_config,
    run_sections,
)
from perceptsr.reproduce.graph import Ablation, SeedContext, SeedStage, seed_contexts, seed_plan
from perceptsr.reproduce.profiles import EAAdamProfile
from perceptsr.reproduce.runner import Runner, Stage, loop_section, train_stage

__all__ = ["EA", "WS", "HV_PSNR_MARGIN", "hypervolume", "population_configs", "plan", "summarise", "results_table",
           "hypervolume_table", "write_report"]

EA, WS, FUSED = "EA-Adam", "weighted-sum Adam", "EA-Adam fused"
#: the hypervolume reference point is (bicubic PSNR - this, bicubic LPIPS) on each dataset
HV_PSNR_MARGIN = 1.0


def hypervolume(points, reference: tuple[float, float]) -> float:
    """Area of the PSNR-LPIPS plane dominated by ``points`` ((psnr, lpips) pairs; PSNR maximised,
    LPIPS minimised) and bounded by ``reference``; points that do not dominate it add nothing."""
    ref_p, ref_l = reference
    pts = sorted(((p, l) for p, l in points if p is not None and l is not None and p > ref_p and l < ref_l),
                 key=lambda x: (-x[0], x[1]))
    area, best_l = 0.0, ref_l
    for p, l in pts:  # by decreasing PSNR: each point adds the strip below the best LPIPS so far
        if l < best_l:
            area += (p - ref_p) * (best_l - l)
            best_l = l
    return area


def population_configs(profile: EAAdamProfile, data: dict, assets: dict, seed: int, psnr_model: str) -> tuple[dict, dict]:
    """(EA-Adam, weighted-sum Adam) configs: identical except ``objective.adam_mode`` and
    ``objective.epoch_iterations`` (weighted-sum: past the last iteration, so no EA phase)."""
    e = profile.ea
    paper = paper_config(profile, "ea_adam")
    if paper is not None:
        base = copy.deepcopy(paper)
        base["seed"] = seed
        base["model"]["pretrained"] = psnr_model
        iterations = base["train"]["iterations"]
    else:
        iterations = e.iterations
        base = {
            **run_sections(profile, data, seed, e, ["psnr", "ssim"], pretrained=psnr_model),
            "optim": {"type": "adam", "lr": e.lr, "betas": [0.9, 0.999]},
            "schedule": {"type": "constant"},
            "train": loop_section(e.iterations, 1),
            "objective": {
                "type": "ea_adam", "population": e.population, "freeze_first": True,
                "perceptual": perceptual_section(assets), "gan_type": "vanilla", "gan_weight": e.gan_weight,
                "discriminator": {"arch": "vgg_discriminator", "kwargs": {"num_feat": e.disc_feat,
                                                                          "input_size": e.patch_size}},
                "t_adam": 1, "epoch_iterations": e.epoch_iterations, "t_ea": e.t_ea, "eval_images": e.eval_images,
                "eval_patch_size": e.eval_patch_size, "eval_max_patches": e.eval_max_patches, "plane_metric": None,
            },
        }
    ws = copy.deepcopy(base)
    ws["objective"].update({"adam_mode": "weighted_sum", "t_adam": 1, "epoch_iterations": iterations})
    ea = copy.deepcopy(base)
    ea["objective"]["adam_mode"] = "normalised"
    return ea, ws


def _population(result: dict) -> dict:
    """The run's final population (member files in index order) and its last discriminator."""
    from perceptsr.ea_adam import discriminator_name, member_file, population_folder

    folder = Path(result["run_dir"]) / population_folder()
    members = sorted(folder.glob("member_*.safetensors"), key=lambda p: int(p.stem.split("_")[1]))
    n = len(members)
    result.update({"population": str(folder), "members": [str(member_file(folder, i)) for i in range(n)],
                   "discriminator": str(Path(result["checkpoint"]) / f"{discriminator_name(n - 1)}.safetensors")})
    return result


def _budget(run_dir: str, trainable: int, iterations: int) -> dict:
    """Generator steps (Adam steps of the trainable individuals) and EA fitness evaluations of a run."""
    from perceptsr.ea_adam import PHASES_LOG

    log = Path(run_dir) / PHASES_LOG
    phases = [json.loads(x) for x in log.read_text(encoding="utf-8").splitlines() if x.strip()] if log.is_file() else []
    return {"generator_steps": trainable * iterations, "ea_phases": len(phases),
            "fitness_evaluations": sum(int(p.get("evaluations", 0)) for p in phases),
            "ea_generations": sum(int(p.get("generations", 0)) for p in phases)}


def fusion_config(profile: EAAdamProfile, data: dict, assets: dict, seed: int, population: str, disc: str) -> dict:
    paper = paper_config(profile, "fusion")
    if paper is not None:
        out = copy.deepcopy(paper)
        out["seed"] = seed
        out["objective"]["experts"] = population
        out["objective"].setdefault("discriminator", {})["pretrained"] = disc
        return out
    f, e = profile.fusion, profile.ea
    return {
        **run_sections(profile, data, seed, f, ["psnr", "ssim"]),
        "optim": {"type": "adam", "lr": f.lr, "betas": [0.9, 0.999]},
        "schedule": {"type": "constant"},
        "train": loop_section(f.iterations, f.val_points),
        "objective": {"type": "fusion", "experts": population, "pixel_weight": 1e-2,
                      "perceptual": perceptual_section(assets), "gan_type": "vanilla", "gan_weight": e.gan_weight,
                      "discriminator": {"arch": "vgg_discriminator", "pretrained": disc,
                                        "kwargs": {"num_feat": e.disc_feat, "input_size": f.patch_size}}},
    }


def _data(ctx: SeedContext) -> dict:
    return ctx.runner.done("common/data")


def _psnr(ctx: SeedContext, folder: Path) -> dict:
    return train_stage(psnr_config(ctx.profile, _data(ctx), ctx.seed), folder, "PSNR", ctx.command("psnr"),
                       ctx.runner.progress)


def _population_stage(index: int, name: str, stage: str):
    def run(ctx: SeedContext, folder: Path) -> dict:
        config = population_configs(ctx.profile, _data(ctx), ctx.runner.done("common/assets"), ctx.seed,
                                    ctx.done("psnr")["model"])[index]
        result = _population(train_stage(config, folder, name, ctx.command(stage), ctx.runner.progress))
        trainable = config["objective"]["population"] - 1  # individual 0 is frozen
        result["budget"] = _budget(result["run_dir"], trainable, config["train"]["iterations"])
        return result

    return run


def _fusion(ctx: SeedContext, folder: Path) -> dict:
    from perceptsr.fusion import fuse_run

    ea, data, profile = ctx.done("ea_adam"), _data(ctx), ctx.profile
    config = fusion_config(profile, data, ctx.runner.done("common/assets"), ctx.seed, ea["population"],
                           ea["discriminator"])
    result = train_stage(config, folder, "fusion", ctx.command("fusion"), ctx.runner.progress)
    fused, weights_json, _ = fuse_run(result["checkpoint"], data["train_lr"], folder / "fused" / "ea_adam_fused.safetensors",
                                      max_images=profile.fuse_images)
    record = json.loads(Path(weights_json).read_text(encoding="utf-8"))
    result.update({"fused": str(fused), "fusion_weights": str(weights_json),
                   "output_gap": record.get("output_gap"), "tradeoff_t": record.get("tradeoff_t"),
                   "fuse_command": f"perceptsr fuse {result['run_dir']} --lr-dir {data['train_lr']} "
                                   f"--max-images {profile.fuse_images} --output {fused}"})
    return result


def _evaluation(ctx: SeedContext, folder: Path) -> dict:
    """Every model of this plan (an ablation: the populations it retrained, the fused model and sweep)."""
    from perceptsr.fusion.tradeoff import load_tradeoff_model

    models = {"PSNR": ctx.done("psnr")["model"]} if "psnr" in ctx.fresh else {}
    for stage, name in (("ea_adam", EA), ("ws_adam", WS)):
        if stage in ctx.fresh:
            models.update({f"{name} {i}": m for i, m in enumerate(ctx.done(stage)["members"]) if i > 0})
    fused = ctx.done("fusion")["fused"]
    models[FUSED] = fused
    models.update({f"tradeoff {t:g}": load_tradeoff_model(fused, t) for t in ctx.profile.sweep})
    return evaluate_models(models, ctx.runner, folder, save_images=ctx.first_seed and ctx.ablation is None)


#: what weighted-sum Adam's run depends on (not the EA phase's settings, which it never uses)
_WS_READS = tuple(f"ea.{k}" for k in ("iterations", "patch_size", "batch_size", "lr", "population", "disc_feat",
                                     "gan_weight"))

#: one seed's stages; ``reads`` / ``after`` say what an ablation must run again (:mod:`.graph`)
SEED_STAGES = [
    SeedStage("psnr", "PSNR pre-training (the initialisation of both populations)", _psnr,
              reads=("generator", "psnr")),
    SeedStage("ea_adam", "EA-Adam population: normalised-gradient Adam + EA phases", _population_stage(0, EA, "ea_adam"),
              reads=("generator", "ea"), after=("psnr",)),
    SeedStage("ws_adam", "weighted-sum Adam population: same preferences, init and Adam steps, no EA",
              _population_stage(1, WS, "ws_adam"), reads=("generator", *_WS_READS), after=("psnr",)),
    SeedStage("fusion", "fusion (stage B) and collapse into one plain model (stage C)", _fusion,
              reads=("fusion", "fuse_images", "ea.gan_weight", "ea.disc_feat"), after=("ea_adam",)),
    SeedStage("eval", "evaluation of both populations, the fused model and the trade-off sweep", _evaluation,
              reads=("sweep",), after=("psnr", "ea_adam", "ws_adam", "fusion")),
]


def plan(runner: Runner, profile: EAAdamProfile, seeds: list[int], ablations: list[Ablation] = ()) -> list[Stage]:
    """The stages of ``seeds`` in order (common ones first), each seed's ablations after it."""
    return common_stages(runner, profile) + seed_plan(runner, profile, seeds, SEED_STAGES, list(ablations))


# ------------------------------------------------------------------------------------------------
# summary and report


def _seed_entry(ctx: SeedContext, bicubic: dict) -> dict:
    ea, ws, fusion = (ctx.done(k) for k in ("ea_adam", "ws_adam", "fusion"))
    datasets = {}
    for ds, models in ctx.metric_table().items():
        n = len(ea["members"])
        ea_m = {f"member_{i}": models["PSNR" if i == 0 else f"{EA} {i}"] for i in range(n)}
        ws_m = {f"member_{i}": models["PSNR" if i == 0 else f"{WS} {i}"] for i in range(len(ws["members"]))}
        sweep = {f"t={t:g}": models[f"tradeoff {t:g}"] for t in ctx.profile.sweep}
        fused = models[FUSED]
        b = bicubic.get(ds) or {}
        ref = (None if b.get("psnr") is None or b.get("lpips") is None
               else (b["psnr"] - HV_PSNR_MARGIN, b["lpips"]))

        def hv(members):
            return None if ref is None else hypervolume([(m["psnr"], m["lpips"]) for m in members], ref)

        hv_ea, hv_ws = hv(ea_m.values()), hv(ws_m.values())
        dominated_by = [k for k, m in ws_m.items() if None not in (m["psnr"], m["lpips"], fused["psnr"], fused["lpips"])
                        and m["psnr"] >= fused["psnr"] and m["lpips"] <= fused["lpips"]
                        and (m["psnr"], m["lpips"]) != (fused["psnr"], fused["lpips"])]
        datasets[ds] = {
            "ea_adam": ea_m, "ws_adam": ws_m, "fused": fused, "sweep": sweep,
            "hypervolume": {"ea_adam": hv_ea, "ws_adam": hv_ws, "fused": hv([fused]),
                            "ea_adam_plus_fused": hv([*ea_m.values(), fused]),
                            "ea_minus_ws": None if hv_ea is None or hv_ws is None else hv_ea - hv_ws,
                            "reference": None if ref is None else {"psnr": ref[0], "lpips": ref[1]}},
            "fused_dominated_by_ws": None if ref is None else dominated_by,
        }
    return {"budget": {"ea_adam": ea["budget"], "ws_adam": ws["budget"]},
            "fusion": {"output_gap": fusion.get("output_gap"), "tradeoff_t": fusion.get("tradeoff_t")},
            "datasets": datasets}


def _seed_table(contexts: list[SeedContext], bicubic: dict) -> dict:
    """``per_seed`` (finished seeds), ``mean``, ``std`` and the hypervolume win count of one plan."""
    from perceptsr.reproduce.summary import aggregate

    per_seed = {str(c.seed): _seed_entry(c, bicubic) for c in contexts if c.done("eval") is not None}
    mean, std = aggregate(list(per_seed.values()))
    wins: dict[str, int] = {}
    for entry in per_seed.values():
        for ds, d in entry["datasets"].items():
            delta = d["hypervolume"]["ea_minus_ws"]
            wins[ds] = wins.get(ds, 0) + int(delta is not None and delta > 0)
    return {"per_seed": per_seed, "mean": mean, "std": std,
            "ea_hypervolume_above_ws": {ds: f"{k} of {len(per_seed)} seeds" for ds, k in wins.items()}}


def summarise(runner: Runner, profile: EAAdamProfile, seeds: list[int], ablations: list[Ablation] = ()) -> dict:
    """The ``summary.json`` body: per finished seed, then mean and std over them; the same for each
    ablation (``ablations.<label>``, with the stages it reran)."""
    from perceptsr.reproduce.graph import rerun
    from perceptsr.reproduce.summary import metric_table

    bicubic = runner.done("common/bicubic")
    base = {ds: m.get("bicubic") for ds, m in metric_table(bicubic["results"]).items()} if bicubic else {}
    own = _seed_table(seed_contexts(runner, profile, seeds, SEED_STAGES), base)
    assets, data = runner.done("common/assets"), runner.done("common/data")
    return {
        "seeds_done": [int(s) for s in own["per_seed"]],
        "complete": len(own["per_seed"]) == len(seeds),
        "niqe_model": assets["niqe"]["model"] if assets else None,
        "vgg": assets["vgg"]["about"] if assets else None,
        "lpips": ("LPIPS-alex v0.1 (sr-rgb: RGB, crop 4)" if assets and assets["lpips_available"]
                  else "not available (no weights): no hypervolume"),
        "hypervolume_reference": f"per dataset: (bicubic PSNR - {HV_PSNR_MARGIN:g} dB, bicubic LPIPS); PSNR on Y, "
                                 "LPIPS-alex; units dB x LPIPS",
        "evaluation": {"datasets": data["eval"] if data else None, "notes": data["notes"] if data else None},
        **own,
        "baselines": {"bicubic": base},
        "ablations": {a.label: {"overrides": a.overrides, "reruns": rerun(SEED_STAGES, a.overrides),
                                **_seed_table(seed_contexts(runner, profile, seeds, SEED_STAGES, a), base)}
                      for a in ablations},
    }


def results_table(body: dict) -> tuple[list[str], list[list[str]]]:
    """(headers, rows): mean ± std over seeds of every member of both populations, the fused model
    and the bicubic baseline, per dataset."""
    from perceptsr.reproduce.figures import mean_pm

    mean, std = body["mean"], body["std"]
    rows = []
    for ds, d in mean.get("datasets", {}).items():
        sd = std["datasets"][ds]
        models = [(f"{name} member {k.split('_')[1]}", d[key][k], sd[key][k])
                  for key, name in (("ea_adam", EA), ("ws_adam", WS)) for k in d[key]]
        models.append((FUSED, d["fused"], sd["fused"]))
        models.append(("bicubic", body["baselines"]["bicubic"].get(ds) or {}, {}))
        rows += [[ds, name] + [mean_pm(m.get(k), s.get(k), 2 if k == "psnr" else 4)
                               for k in ("psnr", "ssim", "niqe", "lpips")] for name, m, s in models]
    return ["dataset", "model", "PSNR (dB)", "SSIM", "NIQE", "LPIPS"], rows


def hypervolume_table(body: dict) -> tuple[list[str], list[list[str]]]:
    """(headers, rows): both populations' hypervolumes, the fused model's and their difference."""
    from perceptsr.reproduce.figures import mean_pm

    mean, std = body["mean"], body["std"]
    rows = []
    for ds, d in mean.get("datasets", {}).items():
        h, hs = d["hypervolume"], std["datasets"][ds]["hypervolume"]
        rows.append([ds] + [mean_pm(h.get(k), hs.get(k), 5) for k in ("ea_adam", "ws_adam", "fused", "ea_minus_ws")]
                    + [body["ea_hypervolume_above_ws"].get(ds, "")])
    return ["dataset", "EA-Adam", "weighted-sum Adam", "fused", "EA - WS", "EA above WS"], rows


def write_report(runner: Runner, body: dict, path: Path) -> Path:
    """``report.html``: hypervolumes, budgets, PD planes (populations per seed, fused, sweep)."""
    from perceptsr.reproduce.figures import mean_pm, pd_figure, table_html, write_page

    stem = path.with_suffix("")
    per_seed, mean = body["per_seed"], body["mean"]
    sections: list[tuple[str, str | bytes]] = []
    sections.append(("Hypervolume in the PSNR-LPIPS plane", f"<p class=\"muted\">Reference: {body['hypervolume_reference']}. "
                     f"Seeds: {body['seeds_done']}. Mean ± sample std.</p>" + table_html(*hypervolume_table(body))))
    sections.append(("Models", table_html(*results_table(body))))
    budget = [[name] + [mean_pm(mean.get("budget", {}).get(key, {}).get(k), None, 0)
                        for k in ("generator_steps", "fitness_evaluations", "ea_phases")]
              for key, name in (("ea_adam", EA), ("ws_adam", WS))]
    sections.append(("Budget per seed", table_html(["population", "generator steps", "fitness evaluations",
                                                    "EA phases"], budget)))
    for metric in ("lpips", "niqe"):
        points, lines = {}, {}
        for ds in mean.get("datasets", {}):
            seeds = [e["datasets"][ds] for e in per_seed.values() if ds in e["datasets"]]

            def pairs(ms, metric=metric):
                return [(m["psnr"], m[metric]) for m in ms]

            lines[ds] = {EA: [pairs(s["ea_adam"].values()) for s in seeds],
                         WS: [pairs(s["ws_adam"].values()) for s in seeds],
                         "trade-off sweep": [pairs(s["sweep"].values()) for s in seeds]}
            b = body["baselines"]["bicubic"].get(ds) or {}
            points[ds] = {FUSED: [(s["fused"]["psnr"], s["fused"][metric]) for s in seeds],
                          "PSNR": [(s["ea_adam"]["member_0"]["psnr"], s["ea_adam"]["member_0"][metric]) for s in seeds],
                          "bicubic": [(b.get("psnr"), b.get(metric))]}
        png = pd_figure(points, metric, stem.with_name(f"{stem.name}_pd_{metric}.png"), lines=lines)
        if png is not None:
            sections.append((f"Perception-distortion plane (PSNR vs {metric.upper()})", png))
    return write_page(path, f"perceptsr reproduce ea-adam ({runner.profile})", sections)
