"""Fault corpus, part 1: training runs and checkpoints (issue 15).

Every case is generated at test time and fails on the code before the fix: two trainers on one run
folder, preemption exit codes, full disks, settings changed on resume, bad checkpoint files, bad
devices, output modes and stale temp files. See docs/guarantees.md.
"""

from __future__ import annotations

import argparse
import collections
import errno
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
import yaml

import perceptsr
from _images import write_smooth_images
from perceptsr.checkpoint import CheckpointSaver, load_model, save_model
from perceptsr.archs import build_arch
from perceptsr.config import TrainConfig, config_from_dict, load_config
from perceptsr.errors import CheckpointError, ConfigError, PerceptsrError
from perceptsr.train.engine import TrainingError, resolve_device, train
from perceptsr.train.objectives import PSNRObjective
from perceptsr import distributed as D

REPO = Path(perceptsr.__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def train_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("hardening_data")
    return write_smooth_images(root / "train", 8, (40, 40), seed=5)


def raw_cfg(train_dir: Path, out: Path, name: str = "run", iterations: int = 6) -> dict:
    return {
        "name": name,
        "output_root": str(out),
        "seed": 1,
        "model": {"arch": "msrresnet", "kwargs": {"num_feat": 4, "num_block": 1}},
        "data": {"train": {"hr_dir": str(train_dir), "patch_size": 16, "batch_size": 2, "num_workers": 0}},
        "optim": {"lr": 1e-3},
        "train": {"iterations": iterations, "log_every": 1, "val_every": 1000, "save_every": 3, "keep_last": 5,
                  "ema_decay": 0.0},
    }


def make_cfg(train_dir: Path, out: Path, name: str = "run", iterations: int = 6) -> TrainConfig:
    return config_from_dict(TrainConfig, raw_cfg(train_dir, out, name, iterations))


def small_model(seed: int = 0):
    torch.manual_seed(seed)
    return build_arch("srresnet", nf=4, nb=1, upscale=2)


# ---------------------------------------------------------------------------------------------
# 1. one trainer per run folder


HOLDER = """
import os, sys, time
from pathlib import Path
from perceptsr.train.objectives import PSNRObjective
from perceptsr.cli import main

flags = Path(sys.argv[1])
step = PSNRObjective.step

def step_and_wait(self, batch, iteration):
    if iteration == int(os.environ.get("HOLD_AT", "2")):  # hold the run folder until the test says go
        (flags / "ready").write_text(str(os.getpid()))
        deadline = time.time() + 120
        while not (flags / "go").exists() and time.time() < deadline:
            time.sleep(0.05)
    return step(self, batch, iteration)

PSNRObjective.step = step_and_wait
sys.exit(main(sys.argv[2:]))
"""


def _env(**extra) -> dict:
    env = {**os.environ, **extra}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    return env


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not path.exists():
        if proc.poll() is not None:
            out, err = proc.communicate()
            pytest.fail(f"holder exited early ({proc.returncode}): {err[-2000:]}")
        if time.time() > deadline:
            proc.kill()
            pytest.fail("holder never reached iteration 2")
        time.sleep(0.05)


@pytest.mark.slow
def test_second_trainer_on_a_run_folder_fails_at_once_naming_the_holder(train_dir, tmp_path):
    import socket

    cfg_file = tmp_path / "tiny.yml"
    cfg_file.write_text(yaml.safe_dump(raw_cfg(train_dir, tmp_path / "out", iterations=4)))
    script = tmp_path / "holder.py"
    script.write_text(HOLDER)
    flags = tmp_path / "flags"
    flags.mkdir()
    argv = ["train", str(cfg_file), "--no-progress"]
    holder = subprocess.Popen([sys.executable, str(script), str(flags), *argv], env=_env(), text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _wait_for(flags / "ready", holder)
        run = tmp_path / "out" / "run"
        ckpts = run / "checkpoints"
        in_progress = ckpts / ".iter_3.tmpabcd"  # what the holder's save in progress looks like
        in_progress.mkdir()
        (in_progress / "net_g.safetensors").write_bytes(b"partial")
        config_before = (run / "config.yml").read_bytes()

        started = time.time()
        second = subprocess.run([sys.executable, "-m", "perceptsr", *argv, "--resume"], env=_env(), text=True,
                                capture_output=True, timeout=300)
        assert second.returncode == 1, second.stderr[-2000:]
        err = second.stderr.strip().splitlines()
        assert len(err) == 1 and "in use by another trainer" in err[0], second.stderr[-2000:]
        assert f"PID {holder.pid}" in err[0] and f"host {socket.gethostname()}" in err[0]
        assert "Traceback" not in second.stderr
        assert time.time() - started < 120  # at once, not after training
        assert in_progress.is_dir()  # the second trainer never touched the holder's temp folder
        assert (run / "config.yml").read_bytes() == config_before
    finally:
        (flags / "go").write_text("")
        out, err = holder.communicate(timeout=300)
    assert holder.returncode == 0, err[-2000:]
    assert "done:" in out

    # killed with -9 while holding the lock: the kernel drops it and the next trainer proceeds,
    # removing the temp folder of the interrupted save (it holds the lock now)
    (flags / "ready").unlink()
    (flags / "go").unlink()
    argv_more = [*argv, "--resume", "--set", "train.iterations=8"]
    victim = subprocess.Popen([sys.executable, str(script), str(flags), *argv_more], env=_env(HOLD_AT="5"),
                              text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _wait_for(flags / "ready", victim)  # resumed at iteration 4, holding the lock in iteration 5
    interrupted = ckpts / ".iter_6.tmpkill"
    interrupted.mkdir()
    victim.kill()  # SIGKILL: no handler, no cleanup
    victim.communicate()
    assert interrupted.is_dir()
    after = subprocess.run([sys.executable, "-m", "perceptsr", *argv, "--resume", "--set", "train.iterations=6"],
                           env=_env(), text=True, capture_output=True, timeout=300)
    assert after.returncode == 0, after.stderr[-2000:]
    assert not interrupted.exists()
    assert "removed 1 temp file(s) of an interrupted save: .iter_6.tmpkill" in (run / "log.txt").read_text()
    assert json.loads((ckpts / "latest.json").read_text())["iteration"] == 6


def test_run_lock_in_process_and_released_after_the_run(train_dir, tmp_path):
    from perceptsr.train.lock import RunLock, RunLockedError

    cfg = make_cfg(train_dir, tmp_path, iterations=2)
    run = tmp_path / "run"
    with RunLock(run):
        with pytest.raises(TrainingError, match=rf"in use by another trainer \(PID {os.getpid()} on host "):
            train(cfg, progress=False)
        assert not (run / "config.yml").exists()
        with pytest.raises(RunLockedError):
            RunLock(run).acquire()
    assert train(cfg, progress=False).iteration == 2  # released: the run goes ahead
    lock = RunLock(run)
    lock.acquire()  # and the loop released it at its end
    lock.release()


# ---------------------------------------------------------------------------------------------
# 2. a preempted run exits 75 and says "stopped, resumable"


def test_preempted_run_exits_75_stopped_resumable(train_dir, tmp_path, monkeypatch, capsys):
    from perceptsr.cli import train as cli

    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers need the main thread")
    cfg_file = tmp_path / "tiny.yml"
    cfg_file.write_text(yaml.safe_dump(raw_cfg(train_dir, tmp_path / "out", iterations=6)))
    step = PSNRObjective.step

    def step_then_preempt(self, batch, iteration):
        logs = step(self, batch, iteration)
        if iteration == 2:
            os.kill(os.getpid(), signal.SIGUSR1)
        return logs

    monkeypatch.setattr(PSNRObjective, "step", step_then_preempt)
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    assert cli.run(parser.parse_args([str(cfg_file), "--no-progress"])) == 75
    out = capsys.readouterr().out
    assert "stopped, resumable" in out and "iteration 2 of 6" in out and "done:" not in out
    monkeypatch.setattr(PSNRObjective, "step", step)
    assert cli.run(parser.parse_args([str(cfg_file), "--no-progress", "--resume"])) == 0
    assert "done:" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------
# 3. a full disk


def _saver_with_one_checkpoint(tmp_path):
    saver = CheckpointSaver(tmp_path / "ckpt", keep_last=2)
    saver.save(1, models={"net_g": (small_model(1), "srresnet", {"nf": 4, "nb": 1, "upscale": 2})},
               training_state={"iteration": 1})
    return saver


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("where", ["weights", "training_state"])
def test_full_disk_while_saving_is_one_clear_error_and_keeps_the_last_checkpoint(tmp_path, monkeypatch, where):
    saver = _saver_with_one_checkpoint(tmp_path)
    before = _snapshot(saver.directory)
    if where == "weights":
        def full(path, *args, **kwargs):
            raise OSError(errno.ENOSPC, "No space left on device", str(path))

        monkeypatch.setattr("perceptsr.checkpoint.format.atomic_write", full)
    else:  # torch's zip writer reports a full disk as a RuntimeError that never mentions space
        def full(*args, **kwargs):
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 4160 vs 4054")

        monkeypatch.setattr(torch, "save", full)
    with pytest.raises(CheckpointError) as info:
        saver.save(2, models={"net_g": (small_model(2), "srresnet", {"nf": 4, "nb": 1, "upscale": 2})},
                   training_state={"iteration": 2})
    message = str(info.value)
    assert "\n" not in message and str(saver.directory / "iter_2") in message
    assert "free" in message and "needs about" in message and "KiB" in message
    assert ("No space left on device" if where == "weights" else "full disk") in message
    assert "last good checkpoint (iter_1)" in message
    assert _snapshot(saver.directory) == before  # no temp folder, pointer and iter_1 untouched


def test_free_space_is_checked_before_a_save(tmp_path, monkeypatch):
    saver = _saver_with_one_checkpoint(tmp_path)
    before = _snapshot(saver.directory)
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr("perceptsr.checkpoint.saver.shutil.disk_usage", lambda p: usage(10**9, 10**9 - 4096, 4096))
    with pytest.raises(CheckpointError, match=r"not enough disk space for checkpoint iter_2: 4\.0 KiB free, it needs "
                                              r"about [\d.]+ (KiB|MiB)"):
        saver.save(2, models={"net_g": (small_model(2), "srresnet", {"nf": 4, "nb": 1, "upscale": 2})})
    assert _snapshot(saver.directory) == before


def test_full_disk_during_training_reaches_log_txt(train_dir, tmp_path, monkeypatch):
    usage = collections.namedtuple("usage", "total used free")
    real = __import__("shutil").disk_usage
    calls = []

    def disk_usage(path):
        calls.append(path)
        return real(path) if len(calls) == 1 else usage(10**9, 10**9 - 1000, 1000)  # full after the first save

    monkeypatch.setattr("perceptsr.checkpoint.saver.shutil.disk_usage", disk_usage)
    with pytest.raises(CheckpointError, match="not enough disk space"):
        train(make_cfg(train_dir, tmp_path), progress=False)
    run = tmp_path / "run"
    assert "error: " in (run / "log.txt").read_text() and "not enough disk space" in (run / "log.txt").read_text()
    assert json.loads((run / "checkpoints" / "latest.json").read_text())["latest"] == "iter_3"


# ---------------------------------------------------------------------------------------------
# 4. settings changed on resume


def test_resume_applies_a_changed_lr_logs_it_and_records_it(train_dir, tmp_path):
    train(make_cfg(train_dir, tmp_path, iterations=3), progress=False)
    raw = raw_cfg(train_dir, tmp_path, iterations=5)
    raw["optim"]["lr"] = 5e-4
    train(config_from_dict(TrainConfig, raw), resume=True, progress=False)
    log = (tmp_path / "run" / "log.txt").read_text()
    assert "resume: applying a changed setting: optim.lr: 0.001 -> 0.0005" in log
    assert "resume: applying a changed setting: train.iterations: 3 -> 5" in log
    after = log.split("resumed from")[1]
    assert "iter 4/5" in after and "lr/net_g 5.000e-04" in after.split("iter 4/5")[1].splitlines()[0]
    assert load_config(tmp_path / "run" / "config.yml").optim.lr == 5e-4


def test_resume_refuses_settings_the_checkpoint_fixes_and_records_nothing(train_dir, tmp_path):
    train(make_cfg(train_dir, tmp_path, iterations=3), progress=False)
    recorded = (tmp_path / "run" / "config.yml").read_bytes()
    raw = raw_cfg(train_dir, tmp_path, iterations=5)
    raw["optim"]["betas"] = [0.5, 0.9]
    raw["seed"] = 2
    raw["model"]["kwargs"]["num_feat"] = 8
    with pytest.raises(ConfigError) as info:
        train(config_from_dict(TrainConfig, raw), resume=True, progress=False)
    message = str(info.value)
    for key in ("model.kwargs.num_feat: 4 -> 8", "optim.betas: [0.9, 0.99] -> [0.5, 0.9]", "seed: 1 -> 2"):
        assert key in message
    assert "3 key(s)" in message and "train.iterations" not in message
    assert (tmp_path / "run" / "config.yml").read_bytes() == recorded


# ---------------------------------------------------------------------------------------------
# 6. one-line errors for bad checkpoint files and devices


def _corpus(tmp_path: Path) -> dict[str, Path]:
    import pickle

    from safetensors.torch import save_file

    good = tmp_path / "good.safetensors"
    save_model(good, small_model(), arch="srresnet", arch_kwargs={"nf": 4, "nb": 1, "upscale": 2})
    data = good.read_bytes()
    files = {
        "truncated_header": data[:20],
        "empty": b"",
        "pickle": pickle.dumps({"weights": [1, 2, 3]}),
    }
    out = {}
    for name, blob in files.items():
        out[name] = tmp_path / f"{name}.safetensors"
        out[name].write_bytes(blob)
    out["text_pth"] = tmp_path / "notes.pth"
    out["text_pth"].write_text("hello, this is not a checkpoint\n")
    sd = small_model().state_dict()
    sd["conv_first.weight"][0, 0, 0, 0] = float("nan")
    out["nan"] = tmp_path / "nan.safetensors"
    save_file(sd, out["nan"])
    sd["conv_first.weight"][0, 0, 0, 0] = float("inf")
    out["inf_pth"] = tmp_path / "inf.pth"
    torch.save(sd, out["inf_pth"])
    return out


@pytest.mark.parametrize("case", ["truncated_header", "empty", "pickle", "text_pth", "nan", "inf_pth"])
def test_bad_checkpoint_files_give_one_line_naming_the_file(tmp_path, case):
    path = _corpus(tmp_path)[case]
    with pytest.raises(CheckpointError) as info:
        load_model(path)
    message = str(info.value)
    assert message.startswith(str(path)) and "\n" not in message
    if case in ("nan", "inf_pth"):
        assert "NaN or Inf" in message and "conv_first.weight" in message


def test_torch_file_named_safetensors_is_read_by_its_bytes(tmp_path):
    model = small_model(3)
    path = tmp_path / "really_torch.safetensors"
    torch.save(model.state_dict(), path)
    loaded = load_model(path)
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), model.state_dict().values()))


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_checkpoint(tmp_path):
    path = tmp_path / "locked.safetensors"
    save_model(path, small_model(), arch="srresnet", arch_kwargs={"nf": 4, "nb": 1, "upscale": 2})
    path.chmod(0)
    with pytest.raises(CheckpointError, match="Permission denied"):
        load_model(path)


def test_upscale_with_nan_weights_fails_and_writes_nothing(tmp_path, capsys):
    from perceptsr.cli import main
    from perceptsr.data.io import write_image

    path = _corpus(tmp_path)["nan"]
    write_image(tmp_path / "in" / "a.png", torch.rand(3, 8, 8))
    assert main(["upscale", "--model", str(path), "--input", str(tmp_path / "in"), "--output",
                 str(tmp_path / "out"), "--quiet"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "NaN or Inf" in err[0] and str(path) in err[0]
    assert not (tmp_path / "out" / "a.png").exists()


def test_upscale_with_a_model_that_outputs_nan_writes_no_black_image(tmp_path):
    from perceptsr.data.io import write_image
    from perceptsr.inference import upscale_path

    model = small_model()
    with torch.no_grad():
        model.conv_last.bias.fill_(float("inf"))  # finite inputs, inf - inf = NaN after the last conv
        model.conv_last.weight.fill_(float("-inf"))
    write_image(tmp_path / "in" / "a.png", torch.rand(3, 8, 8))
    summary = upscale_path(model, tmp_path / "in", tmp_path / "out", scale=2, progress=False)
    assert not summary.processed and "NaN or Inf" in summary.failed[0][1]
    assert not (tmp_path / "out" / "a.png").exists()


@pytest.mark.parametrize("name", ["gpu", "cuda:7"])
def test_unavailable_device_is_a_config_error(train_dir, tmp_path, name):
    if name == "cuda:7" and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    with pytest.raises(ConfigError, match=r"config key 'train\.device'") as info:
        resolve_device(name, D.DistInfo())
    assert name in str(info.value) and "\n" not in str(info.value)
    raw = raw_cfg(train_dir, tmp_path)
    raw["train"]["device"] = name
    with pytest.raises(ConfigError, match="train.device"):
        train(config_from_dict(TrainConfig, raw), progress=False)


# ---------------------------------------------------------------------------------------------
# 9. modes under the umask, stale temp files


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_checkpoint_folders_and_files_follow_the_umask(tmp_path, umask_022):
    saver = _saver_with_one_checkpoint(tmp_path)
    folder = saver.directory / "iter_1"
    assert folder.stat().st_mode & 0o777 == 0o755
    assert (folder / "net_g.safetensors").stat().st_mode & 0o777 == 0o644
    assert (saver.directory / "latest.json").stat().st_mode & 0o777 == 0o644


def test_stale_pointer_temp_files_are_removed_at_start_under_the_lock(train_dir, tmp_path):
    cfg = make_cfg(train_dir, tmp_path, iterations=3)
    train(cfg, progress=False)
    ckpts = tmp_path / "run" / "checkpoints"
    stale = ckpts / ".latest.json.x1y2.tmp"
    stale.write_bytes(b"")  # what a kill -9 inside the pointer write leaves behind
    train(make_cfg(train_dir, tmp_path, iterations=4), resume=True, progress=False)
    assert not stale.exists()
    assert not [p for p in ckpts.iterdir() if p.name.startswith(".")]


def test_saver_no_longer_cleans_on_construction(tmp_path):
    # a saver made only to look up the latest checkpoint must not delete another trainer's save in progress
    folder = tmp_path / "ckpt"
    in_progress = folder / ".iter_7.tmpzz"
    in_progress.mkdir(parents=True)
    CheckpointSaver(folder).latest()
    assert in_progress.is_dir()
    assert CheckpointSaver(folder).remove_stale() == [in_progress] and not in_progress.exists()


def test_perceptsr_errors_stay_one_line_at_the_cli(tmp_path, capsys):
    from perceptsr.cli import main

    path = _corpus(tmp_path)["text_pth"]
    assert main(["upscale", "--model", str(path), "--input", str(tmp_path), "--output", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("perceptsr upscale: error: ") and str(path) in err
    assert isinstance(CheckpointError("x"), PerceptsrError)
