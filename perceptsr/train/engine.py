"""The training loop: one readable function, the same for every objective.

    data -> objective.set_iteration(t) -> objective.step(batch, t) -> EMA -> log / validate / save

What an iteration *does* (losses, networks, optimizer steps) lives in an
:class:`~perceptsr.train.objectives.Objective`; everything around it lives here: seeding, the run
directory, data order, EMA, non-finite-loss policy, TensorBoard, validation, checkpoints, resume,
and DDP (torchrun env vars; only rank 0 writes).

Run directory ``<output_root>/<name>/``: ``config.yml`` (resolved), ``command.txt`` (one line per
launch), ``log.txt``, ``tb/`` (TensorBoard), ``checkpoints/iter_N/`` (see
:class:`perceptsr.checkpoint.CheckpointSaver`: one ``.safetensors`` per trained network with the EMA
weights as plain keys and the raw ones as ``params``, plus ``training_state.pt``).

One trainer per run folder: rank 0 holds :class:`~perceptsr.train.lock.RunLock` on
``<run>/.lock`` for the whole run (a second trainer fails at once, naming the holder), and temp
files of crashed saves are removed only under it. A resumed run applies changed settings and logs each, or refuses
those the checkpoint fixes (:mod:`perceptsr.train.resume_config`); ``config.yml`` is written only
once the config is known to be the one used.

Resume restores the weights, EMA, optimizers, schedules, objective state, the iteration, the RNG
states of every rank and the data position (a pure function of the iteration), so a run stopped at
iteration ``k`` and resumed to ``N`` ends with the same bits as an uninterrupted run to ``N`` on the
same machine and software.
"""

from __future__ import annotations

import functools
import math
import os
import random
import signal
import sys
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from perceptsr.config import TrainConfig, dump_config
from perceptsr.errors import CheckpointError, ConfigError, PerceptsrError
from perceptsr import distributed as D
from perceptsr.train.context import Artifacts, RunContext, RunLog, Runtime
from perceptsr.train.ema import ModelEMA
from perceptsr.train.lock import RunLock
from perceptsr.train.networks import build_generator
from perceptsr.train.objectives import NonFiniteLossError, Objective, build_objective, objective_class
from perceptsr.train.resume_config import ResumeChanges, resume_changes
from perceptsr.train.runs import find_resume_checkpoint, run_dir_of
from perceptsr.train.sampling import ResumableStream
from perceptsr.train.validation import Validator

__all__ = ["TrainingError", "TrainResult", "StopSignals", "train", "resolve_device"]


class TrainingError(PerceptsrError, RuntimeError):
    """Training cannot go on (non-finite losses, a run directory clash, ...)."""


@dataclass
class TrainResult:
    run_dir: Path
    iteration: int
    val_metrics: dict[str, float] = field(default_factory=dict)
    skipped_steps: int = 0
    last_checkpoint: Path | None = None
    stopped_early: bool = False
    generator: torch.nn.Module | None = field(default=None, repr=False)  # final raw weights
    ema_generator: torch.nn.Module | None = field(default=None, repr=False)  # final EMA weights (if any)


class StopSignals:
    """Catch SIGTERM / SIGUSR1 (cluster preemption, ``scancel``, ``kill``) while the loop runs, so it
    can save a checkpoint at the end of the current iteration and return instead of dying mid-write.

    :meth:`install` sets the handlers in the main thread only (signal handlers cannot be set
    elsewhere); :meth:`restore` puts the previous ones back.
    """

    SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGUSR1") if hasattr(signal, name))

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum, frame) -> None:
        self.received = signum

    def install(self) -> None:
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()


# ------------------------------------------------------------------------------------------------
# small helpers


def resolve_device(name: str, info: D.DistInfo) -> torch.device:
    """``train.device`` as a torch device; ConfigError for a name torch does not know or a CUDA device
    this machine does not have."""
    if name == "auto":
        return torch.device(f"cuda:{info.local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ConfigError(f"config key 'train.device': unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and device.index is None:
        device = torch.device(f"cuda:{info.local_rank}")
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if device.index >= count:
            have = f"only {count} CUDA device(s) (cuda:0..cuda:{count - 1})" if count else "no CUDA device"
            raise ConfigError(f"config key 'train.device': {name!r} (rank {info.rank}: {device}) but this machine has "
                              f"{have}; use train.device=auto or cpu")
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _duration(seconds: float) -> str:
    minutes, sec = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{sec:02d}"


def _format(values: dict[str, float]) -> str:
    parts = []
    for k, v in values.items():
        parts.append(f"{k} {v:.3e}" if (abs(v) < 1e-2 or abs(v) >= 1e4) and v != 0 else f"{k} {v:.4f}")
    return " | ".join(parts)


# ------------------------------------------------------------------------------------------------
# data


def build_train_stream(cfg: TrainConfig, info: D.DistInfo, start_batch: int, pin_memory: bool, dataset=None):
    """A DataLoader over an infinite :class:`ResumableStream`, positioned after ``start_batch`` batches.

    ``dataset``: an objective's own training set (indexed by ``(epoch, index)`` keys), else the
    paired images of ``data.train``."""
    from perceptsr.data.datasets import EpochSampler, PairedImageDataset, worker_init_fn

    d = cfg.data.train
    if d.batch_size % info.world_size:
        raise ConfigError(
            f"config key 'data.train.batch_size' ({d.batch_size}) is the total over all processes and must be "
            f"divisible by WORLD_SIZE ({info.world_size})"
        )
    per_rank = d.batch_size // info.world_size
    if dataset is None:
        if d.hr_dir is None:
            raise ConfigError(f"config key 'data.train.hr_dir' is required for objective type {cfg.objective.type!r}")
        dataset = PairedImageDataset(
            d.hr_dir, d.lr_dir, scale=cfg.scale, patch_size=d.patch_size, seed=cfg.seed,
            hflip=d.hflip, vflip=d.vflip, rot90=d.rot90, cache=d.cache, skip_bad=d.skip_bad,
        )
    base = EpochSampler(len(dataset), seed=cfg.seed, repeat=d.repeat, rank=info.rank, world_size=info.world_size)
    if len(base) < per_rank:
        raise ConfigError(
            f"{d.hr_dir or 'the training set'}: {len(base)} samples per process (x{d.repeat} repeat) is less than one batch of "
            f"{per_rank}; lower data.train.batch_size or raise data.train.repeat"
        )
    stream = ResumableStream(base, per_rank, start_batch=start_batch)
    loader = DataLoader(
        dataset,
        batch_size=per_rank,
        sampler=stream,
        num_workers=d.num_workers,
        drop_last=True,
        pin_memory=pin_memory,
        persistent_workers=False,  # a single iterator lives for the whole run anyway
        prefetch_factor=2 if d.num_workers > 0 else None,
        worker_init_fn=functools.partial(worker_init_fn, seed=cfg.seed, rank=info.rank),
        generator=torch.Generator().manual_seed(cfg.seed),  # keeps the global RNG untouched
    )
    return dataset, stream, loader


# ------------------------------------------------------------------------------------------------
# the loop


def _prepare_run_dir(cfg: TrainConfig, resume) -> tuple[Path, Path | None, ResumeChanges]:
    """The run folder, the checkpoint to resume from and the config changes since it (see
    :func:`~perceptsr.train.resume_config.resume_changes`, checked against the ``config.yml`` of the
    checkpoint's run)."""
    run_dir = run_dir_of(cfg)
    checkpoint = find_resume_checkpoint(run_dir, resume)
    changes = ResumeChanges()
    if checkpoint is None and not resume:
        ckpt_dir = run_dir / "checkpoints"
        if ckpt_dir.is_dir() and any(ckpt_dir.glob("iter_*")):
            raise TrainingError(
                f"run directory {run_dir} already holds checkpoints; pass --resume to continue it, or choose "
                f"another experiment name (--set name=...) or output root (--out)"
            )
    if checkpoint is not None:
        recorded = checkpoint.parent.parent / "config.yml"
        if recorded.is_file():
            changes = resume_changes(recorded, cfg)
    return run_dir, checkpoint, changes


def _lock_run_dir(lock: RunLock | None, info: D.DistInfo) -> None:
    """Rank 0 takes the run lock; every rank fails together if it cannot."""
    error = None
    if lock is not None:
        try:
            lock.acquire()
        except PerceptsrError as exc:
            error = str(exc)
    error = D.broadcast_object(error, info)
    if error is not None:
        raise TrainingError(error)


def train(cfg: TrainConfig, *, resume=None, command: str | None = None, stop_after: int | None = None,
          progress: bool = True) -> TrainResult:
    """Run (or resume) the training described by ``cfg``; see the module docstring.

    ``resume``: None/False = fresh run (refuses a run directory that has checkpoints), True = latest
    checkpoint of the run directory (fresh if there is none), or a path. ``stop_after`` ends the
    loop after that iteration, as an interruption would (no extra checkpoint).
    """
    info = D.init_distributed(cfg.train.device)
    lock = RunLock(run_dir_of(cfg)) if info.is_main else None
    try:
        return _train(cfg, info, lock, resume=resume, command=command, stop_after=stop_after, progress=progress)
    finally:
        if lock is not None:
            lock.release()
        D.cleanup(info)


def _train(cfg: TrainConfig, info: D.DistInfo, lock: RunLock | None, *, resume, command, stop_after,
           progress) -> TrainResult:
    from tqdm import tqdm

    from perceptsr.checkpoint import CheckpointSaver, capture_rng_state, restore_rng_state

    loop = cfg.train
    if loop.deterministic:  # cuBLAS needs this before CUDA initialises to be deterministic
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    device = resolve_device(loop.device, info)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cudnn.benchmark = not loop.deterministic
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    if loop.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    seed_everything(cfg.seed)  # same model initialisation on every rank

    # --- run directory (rank 0 writes, holding the run lock) ----------------------------------
    _lock_run_dir(lock, info)
    run_dir, checkpoint, changes = _prepare_run_dir(cfg, resume)
    stale = []
    if info.is_main:
        (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
        stale = CheckpointSaver(run_dir / "checkpoints").remove_stale()  # crashed saves; ours to remove
        dump_config(cfg, run_dir / "config.yml")
        with open(run_dir / "command.txt", "a", encoding="utf-8") as f:
            f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {command or ' '.join(sys.argv)}\n")
    D.barrier(info)
    log = RunLog(run_dir, enabled=info.is_main, console=progress)
    if stale:
        log.info(f"removed {len(stale)} temp file(s) of an interrupted save: {', '.join(p.name for p in stale)}")
    for change in changes.lines:
        log.info(f"resume: applying a changed setting: {change}")

    # --- model, objective, EMA ---------------------------------------------------------------
    objective_cls = objective_class(cfg.objective.type)
    custom = objective_cls.build_generator(cfg)  # e.g. EA-Adam fusion's dynamic net
    if custom is None:
        generator, arch_kwargs = build_generator(cfg)
        g_arch = cfg.model.arch
    else:
        generator, g_arch, arch_kwargs = custom
    runtime = Runtime(device=device, dist=info, bf16=loop.bf16, channels_last=loop.channels_last,
                      compile=loop.compile, grad_clip=loop.grad_clip or None)
    runtime.prepare_module(generator)
    validator = Validator(cfg, device, log) if cfg.data.val is not None and info.is_main else None
    ctx = RunContext(runtime, run_dir=run_dir, log=log, artifacts=Artifacts(run_dir, enabled=info.is_main),
                     validator=validator)
    objective: Objective = build_objective(generator, cfg, ctx)
    ema = ModelEMA(generator, loop.ema_decay) if loop.ema_decay > 0 else None
    trained = objective_cls.trained_network  # net_g, or e.g. "ranker"
    models = {trained: (generator, g_arch, arch_kwargs), **objective.networks()}

    saver = None
    best_name, higher_better = objective.best_metric  # the first validated value, e.g. ("psnr", True)
    if info.is_main:
        saver = CheckpointSaver(run_dir / "checkpoints", keep_last=loop.keep_last, best_metric=best_name,
                                mode="max" if higher_better else "min")

    # --- resume ------------------------------------------------------------------------------
    start, skipped, consecutive, val_metrics, best_value = 0, 0, 0, {}, -math.inf  # best_value: sign-adjusted
    rng_to_restore = None
    if checkpoint is not None:
        state = _restore(saver or CheckpointSaver(checkpoint.parent), checkpoint, models, ema, objective, trained,
                         keep_config_lr=changes.learning_rate)
        start = int(state["iteration"])
        skipped = int(state.get("skipped_steps", 0))
        consecutive = int(state.get("consecutive_skips", 0))
        val_metrics = dict(state.get("val_metrics", {}))
        best_value = float(state.get("best_value", state.get("best_psnr", -math.inf)))
        rngs = state.get("rng") or []
        rng_to_restore = rngs[info.rank] if len(rngs) == info.world_size else None
        data_state = state.get("data", {})
        if data_state.get("world_size", info.world_size) != info.world_size or \
                data_state.get("batch_size", cfg.data.train.batch_size) != cfg.data.train.batch_size:
            log.info("note: world size or batch size changed since the checkpoint; the data order differs "
                     "from an uninterrupted run")
        log.info(f"resumed from {checkpoint} at iteration {start}")
    if start >= loop.iterations:
        log.info(f"nothing to do: iteration {start} >= train.iterations {loop.iterations}")
        log.close()
        return TrainResult(run_dir, start, val_metrics, skipped, checkpoint, False, generator,
                           ema.module if ema is not None else None)

    # --- data --------------------------------------------------------------------------------
    dataset, stream, loader = build_train_stream(cfg, info, start, pin_memory=device.type == "cuda",
                                                 dataset=objective.train_dataset())
    data_iter = iter(loader)
    if rng_to_restore is not None:
        restore_rng_state(rng_to_restore)
    else:
        seed_everything(cfg.seed + info.rank)

    bad_files = getattr(dataset, "bad_files", None)
    if bad_files:
        log.info(f"data.train.skip_bad: skipped {len(bad_files)} training image(s): "
                 + "; ".join(reason for _, reason in bad_files))
    n_params = sum(p.numel() for p in generator.parameters())
    log.info(
        f"training {cfg.name}: {cfg.model.arch} ({n_params / 1e6:.3f}M params), objective {cfg.objective.type}, "
        f"{len(dataset)} training images, {stream.batches_per_epoch} iterations/epoch, batch "
        f"{cfg.data.train.batch_size} over {info.world_size} process(es), device {device}, run dir {run_dir}"
    )

    def save(iteration: int) -> Path | None:
        rngs = D.gather_objects(capture_rng_state(), info)  # collective: every rank takes part
        path = None
        if info.is_main:
            state = {
                "iteration": iteration,
                "optimizers": {k: o.state_dict() for k, o in objective.optimizers().items()},
                "schedulers": {k: s.state_dict() for k, s in objective.schedulers().items()},
                "objective": objective.extra_state(),
                "ema": None if ema is None else {"decay": ema.decay, "updates": ema.updates},
                "rng": rngs,
                "data": {"batches_done": iteration, "dataset_length": len(dataset), "world_size": info.world_size,
                         "batch_size": cfg.data.train.batch_size, "seed": cfg.seed},
                "skipped_steps": skipped,
                "consecutive_skips": consecutive,
                "val_metrics": val_metrics,
                "best_value": best_value,
            }
            metric = next(iter(val_metrics.values()), None) if last_val_iteration == iteration else None
            path = saver.save(
                iteration,
                models=models,
                ema={trained: ema.module} if ema is not None else None,
                training_state=state,
                metric=metric,
                metrics={k.split("/", 1)[-1]: v for k, v in val_metrics.items()} if metric is not None else None,
                extra={"objective": cfg.objective.type, "config_name": cfg.name},
            )
        D.barrier(info)
        return path

    # --- the loop ----------------------------------------------------------------------------
    bar = tqdm(total=loop.iterations, initial=start, disable=not (progress and info.is_main), unit="it",
               desc=cfg.name, dynamic_ncols=True, smoothing=0.05)
    meter: dict[str, list[float]] = defaultdict(list)
    last_val_iteration, last_checkpoint, stopped_early = -1, checkpoint, False
    n_since_log, t_log = 0, time.perf_counter()
    iteration = start
    signals = StopSignals()
    try:
        signals.install()
        for iteration in range(start + 1, loop.iterations + 1):
            batch = next(data_iter)
            objective.set_iteration(iteration)
            try:
                logs = objective.step(batch, iteration)
                consecutive = 0
            except NonFiniteLossError as exc:
                objective.zero_grad()
                where = f"iteration {iteration}: {exc}"
                if loop.nan_policy == "stop":
                    raise TrainingError(
                        f"{where}; stopped (train.nan_policy=stop). Checkpoints are untouched; the last one is "
                        f"{last_checkpoint or 'none'}. Try a lower optim.lr, train.grad_clip, bf16 off, or "
                        f"train.nan_policy=skip."
                    ) from exc
                skipped += 1
                consecutive += 1
                log.info(f"{where}; step skipped ({consecutive} in a row, {skipped} in total)")
                log.scalars({"train/skipped_steps": skipped}, iteration)
                if consecutive >= loop.max_skips:
                    raise TrainingError(
                        f"{where}; {consecutive} consecutive non-finite steps (train.max_skips={loop.max_skips}), "
                        f"giving up. The last checkpoint is {last_checkpoint or 'none'}."
                    ) from exc
                logs = None
            if logs is not None:
                if ema is not None:
                    ema.update(generator)
                for k, v in logs.items():
                    meter[k].append(v)
            bar.update(1)
            n_since_log += 1

            if iteration % loop.log_every == 0 or iteration == loop.iterations:
                elapsed = time.perf_counter() - t_log
                values = {k: sum(v) / len(v) for k, v in meter.items() if v}
                values.update(objective.learning_rates())
                values["perf/it_per_s"] = n_since_log / elapsed if elapsed > 0 else 0.0
                if device.type == "cuda":
                    values["perf/max_mem_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
                log.scalars({k if "/" in k else f"train/{k}": v for k, v in values.items()}, iteration)
                rate = values["perf/it_per_s"]
                eta = _duration((loop.iterations - iteration) / rate) if rate else "?"
                log.info(f"iter {iteration}/{loop.iterations} | {_format(values)} | eta {eta}")
                if logs is not None:
                    bar.set_postfix({k.split("/")[-1]: f"{v:.4g}" for k, v in logs.items()}, refresh=False)
                meter.clear()
                n_since_log, t_log = 0, time.perf_counter()

            save_due = iteration % loop.save_every == 0 or iteration == loop.iterations
            if (cfg.data.val is not None or objective.own_validation) and \
                    (iteration % loop.val_every == 0 or iteration == loop.iterations):
                if info.is_main:
                    t0 = time.perf_counter()
                    val_metrics = {}
                    eval_models = objective.validation_models(ema.module if ema is not None else generator)
                    for name, eval_model in eval_models.items():
                        prefix = f"val/{name}/" if name else "val/"
                        if objective.own_validation:
                            own = objective.validate(eval_model, iteration)
                            val_metrics.update({f"{prefix}{k}": v for k, v in own.items()})
                        else:
                            val_metrics.update(validator(eval_model, prefix=prefix, step=iteration))
                    val_metrics = objective.summarize_validation(val_metrics)  # may put a summary value first
                    log.scalars(val_metrics, iteration)
                    log.info(f"validation @ {iteration} ({time.perf_counter() - t0:.1f} s, "
                             f"{'EMA' if ema is not None else 'raw'} weights): {_format(val_metrics)}")
                val_metrics = D.broadcast_object(val_metrics, info)
                last_val_iteration = iteration
                value = next(iter(val_metrics.values()), math.nan)  # first model's best_name metric
                if (value if higher_better else -value) > best_value:  # every new best is saved
                    best_value = value if higher_better else -value
                    save_due = True
            # a stop signal on any rank stops every rank after this iteration, with a checkpoint
            stop_signal = not D.all_true(signals.received is None, info, device)
            if save_due or stop_signal:
                last_checkpoint = save(iteration) or last_checkpoint
            if save_due or last_val_iteration == iteration:  # keep pauses out of it/s
                n_since_log, t_log = 0, time.perf_counter()
            if stop_signal:
                stopped_early = iteration < loop.iterations
                name = signal.Signals(signals.received).name if signals.received else "a stop signal (another rank)"
                log.info(f"received {name} at iteration {iteration}: checkpoint {last_checkpoint} saved; "
                         f"continue with --resume")
                break
            if stop_after is not None and iteration >= stop_after:
                stopped_early = iteration < loop.iterations
                break
    except PerceptsrError as exc:
        log.info(f"error: {exc}")
        if log.writer is not None:
            log.writer.add_text("error", str(exc), iteration)
        raise
    except KeyboardInterrupt:
        log.info(f"interrupted at iteration {iteration}; the last checkpoint is {last_checkpoint or 'none'} "
                 f"(continue with --resume)")
        raise
    finally:
        signals.restore()
        bar.close()
        del data_iter
        log.close()
    return TrainResult(run_dir, iteration, val_metrics, skipped, last_checkpoint, stopped_early, generator,
                       ema.module if ema is not None else None)


def _restore(saver, checkpoint: Path, models: dict, ema: ModelEMA | None, objective: Objective, trained: str,
             keep_config_lr: bool = False) -> dict:
    """Load the checkpoint into the networks, EMA, optimisers, schedules and objective. With
    ``keep_config_lr`` the base learning rates of the config (a changed ``lr`` on resume) replace
    the restored ones; the optimisers' other state is kept."""
    state = saver.restore(
        checkpoint,
        models={name: entry[0] for name, entry in models.items()},
        ema={trained: ema.module} if ema is not None else None,
    )
    if not state:
        raise CheckpointError(f"{checkpoint}: no training state to resume from (weights only?)")
    optimizers = objective.optimizers()
    missing = sorted(set(optimizers) - set(state.get("optimizers", {})))
    if missing:
        raise CheckpointError(f"{checkpoint}: training state has no optimizer state for {missing}")
    for name, opt in optimizers.items():
        config_lrs = [group.get("initial_lr", group["lr"]) for group in opt.param_groups]
        opt.load_state_dict(state["optimizers"][name])
        if keep_config_lr:
            for group, lr in zip(opt.param_groups, config_lrs):
                group["initial_lr" if "initial_lr" in group else "lr"] = lr
    for name, sched in objective.schedulers().items():
        if name in state.get("schedulers", {}):
            sched.load_state_dict(state["schedulers"][name])
    objective.load_extra_state(state.get("objective") or {})
    if ema is not None and state.get("ema"):
        ema.updates = int(state["ema"]["updates"])
    return state
