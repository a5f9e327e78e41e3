"""Kill/resume trials: crash recovery of ``perceptsr train`` under ``kill -9`` and SIGTERM (issue 15).

    python benchmarks/fault_trials.py [--trials 10] [--sigterm-trials 3] [--seed 0]
                                      [--iterations 300] [--save-every 10] [--keep]

A tiny PSNR run (MSRResNet, 8 features, 1 block, on synthetic images written to a temp folder) is
trained to the end once as the reference. Then each trial starts a fresh run of the same config
in its own folder and interrupts it:

- ``kill -9`` trials alternate between a random moment (a seeded delay after the start, which may
  fall in start-up or in the loop) and a moment inside a checkpoint save: the checkpoints folder is
  polled and the trainer is killed as soon as a chosen stage of a chosen save is seen (its temp
  folder, the ``net_g`` write, the ``training_state`` write, the manifest, or the ``latest.json``
  temp file). A save that completes before the poller sees the stage moves the target to the next
  save.
- SIGTERM trials send the signal at a random moment after the first iteration and expect exit 75
  (``stopped, resumable``) with a checkpoint at the iteration it stopped (exit 0 ``done`` if the
  signal came after the last iteration had been logged).

Each run is then resumed with ``perceptsr train CONFIG --resume`` until it reports done. A trial
passes when the exit codes are as expected, every tensor of the final checkpoint's
``.safetensors`` files equals the reference's (``torch.equal``), no temp file or folder is left,
``latest.json`` names the last iteration's complete checkpoint, and the run lock is free with an
empty holder record. The children run ``sys.executable -m perceptsr`` with ``OMP_NUM_THREADS=1``.
Prints one table row per trial and ``N/N trials bit-identical``; exits 1 if any trial fails.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from perceptsr.data.io import write_image  # noqa: E402
from perceptsr.train.lock import RunLock, RunLockedError  # noqa: E402

EXIT_STOPPED = 75
STAGES = ("folder", "net_g", "training_state", "manifest", "pointer")  # the order of a save
ITER_LINE = re.compile(r"iter (\d+)/\d+ \|")


@dataclasses.dataclass
class Trial:
    number: int
    signal: str
    when: str = ""
    exit_ok: bool = False
    exit_note: str = ""
    temp_after_kill: str = "-"
    resumed_ok: bool = False
    resumes: int = 0
    bit_identical: bool = False
    leftovers: str = "-"
    pointer_ok: bool = False
    lock_ok: bool = False
    problems: list[str] = dataclasses.field(default_factory=list)

    @property
    def passed(self) -> bool:
        return (self.exit_ok and self.resumed_ok and self.bit_identical and self.leftovers == "none"
                and self.pointer_ok and self.lock_ok)


# ---------------------------------------------------------------------------------------------
# the tiny run


def write_images(folder: Path, n: int, size: int, seed: int) -> Path:
    """Smooth RGB PNGs: bicubic upsampling of uniform noise at a quarter of the size."""
    gen = torch.Generator().manual_seed(seed)
    for i in range(n):
        small = torch.rand(1, 3, size // 4, size // 4, generator=gen)
        img = torch.nn.functional.interpolate(small, size=(size, size), mode="bicubic", align_corners=False)
        write_image(folder / f"img{i:02d}.png", img.clamp(0, 1)[0])
    return folder


def write_config(root: Path, iterations: int, save_every: int) -> Path:
    cfg = {
        "name": "run",
        "output_root": str(root / "unused"),
        "seed": 1,
        "model": {"arch": "msrresnet", "kwargs": {"num_feat": 8, "num_block": 1}},
        "data": {"train": {"hr_dir": str(write_images(root / "train", 8, 40, seed=5)), "patch_size": 16,
                           "batch_size": 2, "num_workers": 0}},
        "optim": {"lr": 1e-3},
        "schedule": {"type": "cosine", "periods": [iterations], "restart_weights": [1.0], "eta_min": 1e-5},
        "train": {"iterations": iterations, "log_every": 1, "val_every": 10**9, "save_every": save_every,
                  "keep_last": 2, "ema_decay": 0.9},
    }
    path = root / "tiny.yml"
    path.write_text(json.dumps(cfg, indent=1))  # JSON is YAML
    return path


def child_env() -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
    return env


def start(config: Path, out: Path, resume: bool) -> subprocess.Popen:
    argv = [sys.executable, "-m", "perceptsr", "train", str(config), "--out", str(out), "--no-progress"]
    if resume:
        argv.append("--resume")
    return subprocess.Popen(argv, env=child_env(), cwd=out.parent, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][-300:] if lines else "(no output)"


def logged_iteration(run: Path) -> int | None:
    try:
        found = ITER_LINE.findall((run / "log.txt").read_text(encoding="utf-8", errors="replace"))
    except OSError:
        return None
    return int(found[-1]) if found else None


def temp_entries(run: Path) -> list[str]:
    """Temp files and folders anywhere in the run folder (what an interrupted save leaves), a temp
    folder shown with what it holds: ``checkpoints/.iter_40.tmpX/{.net_g.safetensors.Y.tmp}``."""
    found = sorted(p for p in run.rglob("*") if ".tmp" in p.name)
    tops = [p for p in found if not any(q in p.parents for q in found)]
    shown = []
    for p in tops:
        held = ",".join(sorted(q.name for q in p.iterdir())) if p.is_dir() else None
        shown.append(str(p.relative_to(run)) + ("" if held is None else f"/{{{held}}}"))
    return shown


# ---------------------------------------------------------------------------------------------
# interrupting a run


def save_stage(ckpts: Path, iteration: int) -> str | None:
    """The stage of the save of ``iter_{iteration}`` visible now, or None."""
    try:
        entries = os.listdir(ckpts)
    except OSError:
        return None
    for name in entries:
        if name.startswith(f".iter_{iteration}.tmp") and "tmp-old" not in name:
            try:
                inside = os.listdir(ckpts / name)
            except OSError:
                continue  # renamed into place meanwhile
            if any(n.startswith(".manifest.json.") or n == "manifest.json" for n in inside):
                return "manifest"
            if any(n.startswith(".training_state.pt.") or n == "training_state.pt" for n in inside):
                return "training_state"
            if any(n.startswith(".net_g.") or n == "net_g.safetensors" for n in inside):
                return "net_g"
            return "folder"
    if any(n.startswith(".latest.json.") for n in entries) and (ckpts / f"iter_{iteration}").is_dir():
        return "pointer"
    return None


def pointer_iteration(ckpts: Path) -> int:
    try:
        return int(json.loads((ckpts / "latest.json").read_text())["iteration"])
    except (OSError, ValueError, KeyError, TypeError):
        return -1


def kill_inside_save(proc: subprocess.Popen, ckpts: Path, target: int, stage: str, save_every: int,
                     iterations: int) -> str:
    """Poll until ``stage`` (or a later one) of the save of ``iter_{target}`` is seen, then SIGKILL."""
    want = STAGES.index(stage)
    while proc.poll() is None:
        seen = save_stage(ckpts, target)
        if seen is not None and STAGES.index(seen) >= want:
            proc.send_signal(signal.SIGKILL)
            return f"inside save iter_{target} ({seen})"
        if pointer_iteration(ckpts) >= target:  # that save finished unseen: aim at the next one
            if target + save_every > iterations:
                proc.send_signal(signal.SIGKILL)
                return f"after save iter_{target} (every {stage} stage missed)"
            target += save_every
        time.sleep(0.0002)
    return "never: the run ended first"


def _still_running_after(proc: subprocess.Popen, delay: float) -> bool:
    """Wait ``delay`` s (or until the process ends); True if it is still running."""
    started = time.monotonic()
    while proc.poll() is None and time.monotonic() - started < delay:
        time.sleep(0.002)
    return proc.poll() is None


def kill_after(proc: subprocess.Popen, run: Path, delay: float) -> str:
    if not _still_running_after(proc, delay):
        return "never: the run ended first"
    proc.send_signal(signal.SIGKILL)
    it = logged_iteration(run)
    return f"{delay:.2f} s / " + ("start-up" if it is None else f"iter {it}")


def sigterm_after_first_iteration(proc: subprocess.Popen, run: Path, delay: float) -> str:
    """Wait for the first logged iteration (the stop handler is installed), then ``delay`` s, then SIGTERM."""
    while proc.poll() is None and logged_iteration(run) is None:
        time.sleep(0.005)
    if not _still_running_after(proc, delay):
        return "never: the run ended first"
    proc.send_signal(signal.SIGTERM)
    it = logged_iteration(run)
    return f"1st iter + {delay:.2f} s / iter {it}"


# ---------------------------------------------------------------------------------------------
# checks


def weights(folder: Path) -> dict[str, dict[str, torch.Tensor]]:
    return {p.name: load_file(str(p)) for p in sorted(folder.glob("*.safetensors"))}


def same_weights(a: dict, b: dict) -> tuple[bool, str]:
    if a.keys() != b.keys():
        return False, f"files differ: {sorted(a)} vs {sorted(b)}"
    for name in a:
        if a[name].keys() != b[name].keys():
            return False, f"{name}: tensor names differ"
        for key in a[name]:
            if not torch.equal(a[name][key], b[name][key]):
                return False, f"{name}: tensor {key} differs"
    return True, ""


def check_finished_run(trial: Trial, run: Path, iterations: int, reference: dict) -> None:
    ckpts = run / "checkpoints"
    leftovers = temp_entries(run)
    trial.leftovers = "none" if not leftovers else ", ".join(leftovers)
    try:
        pointer = json.loads((ckpts / "latest.json").read_text())
        final = ckpts / pointer["latest"]
        trial.pointer_ok = (pointer["latest"] == f"iter_{iterations}" and pointer["iteration"] == iterations
                            and (final / "manifest.json").is_file())
        if not trial.pointer_ok:
            trial.problems.append(f"latest.json points at {pointer['latest']} (iteration {pointer['iteration']})")
    except (OSError, ValueError, KeyError, TypeError) as exc:
        trial.problems.append(f"latest.json unreadable: {exc}")
        final = ckpts / f"iter_{iterations}"
    if final.is_dir():
        trial.bit_identical, why = same_weights(weights(final), reference)
        if why:
            trial.problems.append(why)
    else:
        trial.problems.append(f"no final checkpoint {final.name}")
    lock = RunLock(run)
    try:
        lock.acquire()
        lock.release()
        record = (run / RunLock.FILE).read_text()
        trial.lock_ok = record == ""
        if record:
            trial.problems.append(f"lock file still names a holder: {record.strip()}")
    except RunLockedError as exc:
        trial.problems.append(str(exc))


def resume_until_done(trial: Trial, config: Path, out: Path, limit: int = 3) -> None:
    for _ in range(limit):
        proc = start(config, out, resume=True)
        stdout, stderr = proc.communicate(timeout=900)
        trial.resumes += 1
        if proc.returncode == 0 and "done:" in stdout:
            trial.resumed_ok = True
            return
        if proc.returncode != EXIT_STOPPED:
            trial.problems.append(f"resume exited {proc.returncode}: {last_line(stderr or stdout)}")
            return
    trial.problems.append(f"not done after {limit} resumes")


def run_trial(trial: Trial, config: Path, out: Path, rng: random.Random, args, reference: dict,
              ref_seconds: float) -> None:
    run = out / "run"
    out.mkdir(parents=True)
    proc = start(config, out, resume=False)
    saves = list(range(args.save_every, args.iterations + 1, args.save_every))
    if trial.signal == "SIGTERM":
        trial.when = sigterm_after_first_iteration(proc, run, rng.uniform(0.0, 0.6 * args.loop_seconds))
    elif trial.number % 2 == 0:  # inside a save: a chosen stage of a chosen save
        stage = STAGES[(trial.number // 2) % len(STAGES)]
        trial.when = kill_inside_save(proc, run / "checkpoints", rng.choice(saves[:-1]), stage, args.save_every,
                                      args.iterations)
    else:
        trial.when = kill_after(proc, run, rng.uniform(0.3, 0.85 * ref_seconds))
    stdout, stderr = proc.communicate(timeout=900)
    expected = -signal.SIGKILL if trial.signal == "SIGKILL" else EXIT_STOPPED
    late = trial.signal == "SIGTERM" and trial.when.endswith(f"iter {args.iterations}")
    if late:  # the signal came after the last iteration: the run is complete, "done" is the right answer
        expected = 0
    trial.exit_note = str(proc.returncode) + (" (late: done)" if late else "")
    trial.exit_ok = proc.returncode == expected
    if trial.when.startswith("never"):
        trial.exit_ok = False
        trial.problems.append("the signal was never sent: the run finished first (trial too slow to aim)")
    elif not trial.exit_ok:
        trial.problems.append(f"interrupted run exited {proc.returncode}, expected {expected}: "
                              f"{last_line(stderr or stdout)}")
    if trial.signal == "SIGTERM" and trial.exit_ok and not late:
        m = re.search(r"at iteration (\d+) of", stdout)
        stopped = int(m.group(1)) if m else -1
        trial.exit_note += f" (saved iter_{stopped})"
        if "stopped, resumable" not in stdout or pointer_iteration(run / "checkpoints") != stopped:
            trial.exit_ok = False
            trial.problems.append(f"no checkpoint at the stop iteration: {last_line(stdout)}")
    trial.temp_after_kill = ", ".join(temp_entries(run)) or "none"
    if trial.when.startswith("inside save") and trial.temp_after_kill == "none":
        trial.when += ", landed after its rename"  # seen in the save, but the kill came a moment later
    elif trial.signal == "SIGKILL" and "save" not in trial.when and trial.temp_after_kill != "none":
        trial.when += ", inside a save"  # a random moment that fell in a save
    resume_until_done(trial, config, out)
    check_finished_run(trial, run, args.iterations, reference)


# ---------------------------------------------------------------------------------------------


def print_table(trials: list[Trial]) -> None:
    head = ("trial", "signal", "when", "exit", "temp after kill", "resumed ok", "bit-identical", "leftovers")
    rows = [(str(t.number), t.signal, t.when, t.exit_note + ("" if t.exit_ok else " (!)"), t.temp_after_kill,
             f"{'yes' if t.resumed_ok else 'NO'} ({t.resumes} run)", "yes" if t.bit_identical else "NO",
             t.leftovers) for t in trials]
    widths = [max(len(r[i]) for r in (head, *rows)) for i in range(len(head))]
    for r in (head, tuple("-" * w for w in widths), *rows):
        print("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=10, help="kill -9 trials (half at a random moment, half inside a save)")
    parser.add_argument("--sigterm-trials", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--save-every", type=int, default=10)
    parser.add_argument("--keep", action="store_true", help="keep the temp folder and print its path")
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    root = Path(tempfile.mkdtemp(prefix="perceptsr_fault_trials_"))
    try:
        config = write_config(root, args.iterations, args.save_every)
        t0 = time.monotonic()
        ref_out = root / "reference"
        ref_out.mkdir()
        proc = start(config, ref_out, resume=False)
        first_iter = None
        while proc.poll() is None:
            if first_iter is None and logged_iteration(ref_out / "run") is not None:
                first_iter = time.monotonic() - t0
            time.sleep(0.005)
        stdout, stderr = proc.communicate()
        ref_seconds = time.monotonic() - t0
        if proc.returncode != 0:
            print(f"reference run failed ({proc.returncode}): {last_line(stderr or stdout)}", file=sys.stderr)
            return 1
        args.loop_seconds = ref_seconds - (first_iter or 0.0)
        reference = weights(ref_out / "run" / "checkpoints" / f"iter_{args.iterations}")
        print(f"reference: {args.iterations} iterations, a checkpoint every {args.save_every}, {ref_seconds:.1f} s "
              f"({ref_seconds - args.loop_seconds:.1f} s start-up, {args.loop_seconds:.1f} s loop); seed {args.seed}")

        trials = [Trial(i + 1, "SIGKILL") for i in range(args.trials)]
        trials += [Trial(args.trials + i + 1, "SIGTERM") for i in range(args.sigterm_trials)]
        for trial in trials:
            run_trial(trial, config, root / f"trial_{trial.number:02d}", rng, args, reference, ref_seconds)
        print_table(trials)
        for t in trials:
            for problem in t.problems:
                print(f"trial {t.number}: {problem}")
        identical = sum(t.bit_identical for t in trials)
        passed = sum(t.passed for t in trials)
        print(f"{identical}/{len(trials)} trials bit-identical ({passed}/{len(trials)} passed every check)")
        return 0 if passed == len(trials) else 1
    finally:
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
