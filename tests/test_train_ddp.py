"""DDP on CPU: ``torchrun --nproc_per_node 2`` (gloo) trains a tiny model; both ranks must end with
identical weights, equal (to float rounding) to one process with the same total batch, and a
non-finite loss on one rank only must make *both* ranks skip that step."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import test_train_engine  # noqa: F401  (registers the nan_psnr_test objective used below)
from _images import write_smooth_images

WORKER = textwrap.dedent('''
    import dataclasses, hashlib, json, os, sys
    import torch
    from perceptsr.config import ObjectiveConfig, PSNRObjectiveConfig, load_config
    from perceptsr.train.engine import train
    from perceptsr.train.objectives import PSNRObjective, register_objective

    @ObjectiveConfig.register("nan_on_rank")
    @dataclasses.dataclass(frozen=True)
    class NanOnRankConfig(PSNRObjectiveConfig):
        type: str = "nan_on_rank"
        nan_at: tuple[int, ...] = ()
        nan_rank: int = -1

    @register_objective("nan_on_rank")
    class NanOnRank(PSNRObjective):
        def step(self, batch, iteration):
            lr, hr = self.runtime.to_device(batch["lr"]), self.runtime.to_device(batch["hr"])
            loss = self.criterion(self.net_g(lr), hr)
            if iteration in self.options.nan_at and self.options.nan_rank in (-1, self.runtime.dist.rank):
                loss = loss * float("nan")
            self.optimize(loss, self.optimizer_g, self.generator)
            return {"loss/l1": loss.item()}

    torch.set_num_threads(1)
    cfg_path, out_dir = sys.argv[1], sys.argv[2]
    result = train(load_config(cfg_path), progress=False)
    rank = os.environ["RANK"]
    digest = hashlib.sha256()
    for module in (result.generator, result.ema_generator):
        for key, value in module.state_dict().items():
            digest.update(key.encode())
            digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    torch.save(result.generator.state_dict(), os.path.join(out_dir, f"weights{rank}.pt"))
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump({"hash": digest.hexdigest(), "iteration": result.iteration, "skipped": result.skipped_steps,
                   "world": os.environ["WORLD_SIZE"]}, f)
''')

CONFIG = """
name: ddp
output_root: {out}
seed: 5
model: {{arch: msrresnet, kwargs: {{num_feat: 8, num_block: 1}}}}
data:
  train: {{hr_dir: {train}, patch_size: 32, batch_size: 4, num_workers: 0}}
  val: {{hr_dir: {val}}}
objective: {{type: nan_on_rank, nan_at: [3], nan_rank: 1}}
optim: {{lr: 1e-3}}
train: {{iterations: 6, log_every: 2, val_every: 3, save_every: 3, grad_clip: 1.0, ema_decay: 0.9,
        nan_policy: skip}}
"""


@pytest.mark.slow
def test_torchrun_two_processes_agree(tmp_path):
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists():
        torchrun = shutil.which("torchrun")
        if torchrun is None:
            pytest.skip("torchrun not found")
    write_smooth_images(tmp_path / "train", 12, (44, 40), seed=1)
    write_smooth_images(tmp_path / "val", 2, (36, 32), seed=2)
    (tmp_path / "worker.py").write_text(WORKER)
    (tmp_path / "ddp.yml").write_text(CONFIG.format(out=tmp_path / "runs", train=tmp_path / "train", val=tmp_path / "val"))
    out = tmp_path / "out"
    out.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run(
        [str(torchrun), "--standalone", "--nproc_per_node", "2", str(tmp_path / "worker.py"),
         str(tmp_path / "ddp.yml"), str(out)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=150,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["world"] == "2" and ranks[0]["iteration"] == ranks[1]["iteration"] == 6
    assert ranks[0]["skipped"] == ranks[1]["skipped"] == 1  # NaN on rank 1 only: both skipped step 3
    assert ranks[0]["hash"] == ranks[1]["hash"]

    # only rank 0 wrote: one start line in the log, checkpoints present
    run = tmp_path / "runs" / "ddp"
    log = (run / "log.txt").read_text()
    assert log.count("training ddp:") == 1 and "over 2 process(es)" in log
    assert (run / "checkpoints" / "iter_6" / "net_g.safetensors").is_file()
    assert len(list((run / "tb").glob("events.out.tfevents.*"))) == 1

    # one process with the same total batch sees the same samples (rank shards interleave), so the
    # result matches up to the order of float additions in the gradient all-reduce
    from perceptsr.config import load_config
    from perceptsr.train.engine import train

    cfg = load_config(tmp_path / "ddp.yml", overrides=[
        f"output_root={tmp_path / 'single'}", "objective={type: nan_psnr_test, nan_at: [3]}"])
    single = train(cfg, progress=False)
    assert single.skipped_steps == 1
    ddp_weights = torch.load(out / "weights0.pt", weights_only=True)
    for key, value in single.generator.state_dict().items():
        torch.testing.assert_close(ddp_weights[key], value, rtol=0, atol=2e-5, msg=key)
