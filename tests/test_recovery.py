"""Recovery that works as printed: every "resume with" command the CLI prints is run here, as printed;
resume names the checkpoints it found; safe mid-run changes; folder runs that resume from anywhere;
runaway training seen at the step; signals and closed pipes that still end in a checkpoint."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ganforge.checkpoint import load_checkpoint
from ganforge.cli import main

TINY = ["--no-progress", "--device", "cpu", "--data", "mnist-5k", "--batch-size", "8", "--set", "model.g_channels=4",
        "model.d_channels=4", "model.z_dim=8", "data.limit=64", "data.download=false", "train.log_every=2",
        "train.checkpoint_every=3", "train.n_samples=4"]  # fmt: skip


def _tiny(tmp: Path, name: str, steps: int = 6, *sets: str) -> list[str]:
    return ["train", *TINY, *sets, "--steps", str(steps), "--runs-dir", str(tmp / "runs"), "--name", name]


def _printed_command(text: str, after: str) -> list[str]:
    """The `ganforge ...` command printed after `after`, as argv for main()."""
    match = re.search(re.escape(after) + r"\s*(ganforge train [^;\n]*)", text)
    assert match, text
    argv = shlex.split(match.group(1))
    return argv[1:]


def _events(run: Path, kind: str) -> list[dict]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in records if r.get("event") == kind]


def test_divergence_stop_advice_works_as_printed(tmp_path, isolated_env, capsys):
    assert main(_tiny(tmp_path, "div", 6, "optim.g_lr=.inf")) == 3
    err = capsys.readouterr().err
    run = tmp_path / "runs" / "div"
    assert f"ganforge train --resume {run} --from healthy.pt --set optim.g_lr=0.0002 optim.d_lr=0.0001" in err
    assert main(_printed_command(err, "Resume with half the learning rates:")) == 0
    resumed = _events(run, "resume")[-1]
    assert resumed["changes"]["optim.g_lr"][1] == pytest.approx(2e-4)
    assert load_checkpoint(run / "checkpoints" / "final.pt")["opt_G"]["param_groups"][0]["base_lr"] == pytest.approx(2e-4)


def test_the_rollback_advice_works_as_printed(tmp_path, isolated_env, capsys):
    # a runaway (lr 10: D saturates, every gradient exactly 0) under the stop policy
    argv = _tiny(tmp_path, "lr10", 40, "optim.g_lr=10", "optim.d_lr=10", "train.log_every=10", "monitor.on_collapse=stop")
    assert main(argv) == 3
    err = capsys.readouterr().err
    assert "runaway at step 10" in err
    assert main(_printed_command(err, "roll back by itself at the next collapse:")) in (0, 3)  # (lr 10 diverges again)
    run = tmp_path / "runs" / "lr10"
    assert _events(run, "resume")[-1]["changes"]["monitor.on_collapse"] == ["stop", "rollback"]
    assert _events(run, "rollback")


def test_resume_without_last_pt_names_the_checkpoints_it_found(tmp_path, isolated_env, capsys):
    assert main(_tiny(tmp_path, "r", 6)) == 0
    run = tmp_path / "runs" / "r"
    (run / "checkpoints" / "last.pt").unlink()
    (run / "checkpoints" / "final.pt").unlink()
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--steps", "9", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "has no checkpoints/last.pt" in err and "healthy.pt (step 0)" in err and "Traceback" not in err
    argv = _printed_command(err, "Continue from the newest with:")
    assert argv[-2:] == ["--from", "step_0000006.pt"]
    assert main([*argv, "--steps", "9", "--no-progress"]) == 0


def test_a_run_that_stopped_before_its_first_checkpoint_can_be_started_again_as_printed(tmp_path, isolated_env, capsys):
    from ganforge.config import build_config

    run = tmp_path / "runs" / "early"
    run.mkdir(parents=True)
    cfg = build_config(overrides={"data": {"name": "mnist-5k", "limit": 64, "download": False},
                                  "model": {"g_channels": 4, "d_channels": 4, "z_dim": 8},
                                  "train": {"steps": 3, "batch_size": 8, "device": "cpu"},
                                  "run": {"runs_dir": str(tmp_path / "runs")}})  # fmt: skip
    (run / "config.yaml").write_text(cfg.to_yaml())
    assert main(["train", "--resume", str(run)]) == 1
    err = capsys.readouterr().err
    assert "stopped before its first checkpoint" in err
    assert main([*_printed_command(err, "start it again with:"), "--no-progress"]) == 0


def test_resume_may_change_rates_and_policy_not_the_model(tmp_path, isolated_env, capsys):
    assert main(_tiny(tmp_path, "r", 6)) == 0
    run = tmp_path / "runs" / "r"
    assert main(["train", "--resume", str(run), "--steps", "9", "--no-progress", "--set", "optim.d_lr=5e-5",
                 "monitor.patience=5"]) == 0  # fmt: skip
    err = capsys.readouterr().err
    assert f"resuming {run} from step 6 of 9" in err and "optim.d_lr: 0.0002 -> 5e-05" in err
    saved = load_checkpoint(run / "checkpoints" / "final.pt")
    assert saved["opt_D"]["param_groups"][0]["base_lr"] == pytest.approx(5e-5)
    assert saved["opt_G"]["param_groups"][0]["base_lr"] == pytest.approx(2e-4)
    assert saved["config"]["monitor"]["patience"] == 5
    assert main(["train", "--resume", str(run), "--steps", "12", "--set", "model.z_dim=16"]) == 2
    assert "cannot change model.z_dim when resuming" in capsys.readouterr().err


def _image_folder(root: Path, n: int = 8) -> Path:
    root.mkdir(parents=True)
    for i in range(n):
        pixels = np.random.default_rng(i).integers(0, 256, (40, 40, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / f"{i}.png")
    return root


def test_a_folder_run_resumes_from_anywhere_and_may_be_repointed_to_the_same_images(tmp_path, isolated_env,
                                                                                    monkeypatch, capsys):  # fmt: skip
    work = tmp_path / "work"
    _image_folder(work / "sets" / "x")
    monkeypatch.chdir(work)
    argv = ["train", "--data", "folder:sets/x", "--resolution", "64", "--model", "dcgan64", "--steps", "3",
            "--batch-size", "4", "--no-progress", "--runs-dir", str(tmp_path / "runs"), "--name", "f", "--set",
            "model.g_channels=4", "model.d_channels=4", "model.z_dim=8", "train.n_samples=4"]  # fmt: skip
    assert main(argv) == 0
    run = tmp_path / "runs" / "f"
    assert load_checkpoint(run / "checkpoints" / "final.pt")["config"]["data"]["name"] == f"folder:{work / 'sets' / 'x'}"
    monkeypatch.chdir(tmp_path)  # elsewhere: the stored absolute path still finds the images
    assert main(["train", "--resume", str(run), "--steps", "4", "--no-progress"]) == 0
    moved = tmp_path / "moved"
    shutil.move(work / "sets" / "x", moved)
    assert main(["train", "--resume", str(run), "--steps", "5", "--no-progress", "--data", f"folder:{moved}"]) == 0
    assert _events(run, "resume")[-1]["changes"]["data.name"][1] == f"folder:{moved}"
    other = _image_folder(tmp_path / "other")  # as many images, other pixels
    (other / "0.png").unlink()
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(other / "0.png")
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--steps", "6", "--no-progress", "--data", f"folder:{other}"]) == 2
    assert "not the same ones (their hash differs)" in capsys.readouterr().err
    assert main(["train", "--resume", str(run), "--steps", "6", "--data", "mnist"]) == 2
    assert "only a folder dataset may be re-pointed" in capsys.readouterr().err


def test_runaway_training_is_seen_at_the_step(tmp_path, isolated_env, capsys):
    # lr 10 saturates D within a few steps: d_loss exactly 0 and every gradient exactly 0 from then on
    assert main(_tiny(tmp_path, "lr10", 40, "optim.g_lr=10", "optim.d_lr=10", "train.log_every=10")) == 0
    runaway = _events(tmp_path / "runs" / "lr10", "runaway")
    assert len(runaway) == 1 and runaway[0]["step"] <= 20 and runaway[0]["action"] == "warn"
    assert "every gradient is exactly zero" in runaway[0]["reasons"][-1]
    assert "runaway at step" in capsys.readouterr().err


def test_runaway_losses_are_caught_without_gradient_norms():
    import torch

    from ganforge.train import runaway

    assert runaway({"d_loss": torch.tensor(0.3), "g_loss": torch.tensor(3e5)}, None) == [
        "g_loss is 3e+05 (beyond ±100000)"]  # fmt: skip
    assert runaway({"d_loss": torch.tensor(0.3)}, {"d_grad_norm": 0.0, "g_grad_norm": 0.2}) == []
    assert runaway({"d_loss": torch.tensor(0.3)}, {"d_grad_norm": None, "g_grad_norm": None}) == []


def test_a_run_whose_config_cannot_be_written_leaves_no_empty_folder(tmp_path, isolated_env, monkeypatch, capsys):
    import ganforge.runlog as runlog
    from ganforge.checkpoint import atomic_write_bytes

    def full(path, data):
        if Path(path).name == "config.yaml":
            raise OSError(28, "No space left on device")
        atomic_write_bytes(path, data)

    monkeypatch.setattr(runlog, "atomic_write_bytes", lambda p, d: atomic_write_bytes(Path("/proc/nope") / p.name, d)
                        if p.name == "config.yaml" else atomic_write_bytes(p, d))  # fmt: skip
    assert main(_tiny(tmp_path, "full", 3)) == 1
    err = capsys.readouterr().err
    assert "cannot start the run" in err and "run the same command again" in err and "Traceback" not in err
    assert not (tmp_path / "runs" / "full").exists()


def test_a_log_write_that_fails_never_stops_training(tmp_path, capsys):
    from ganforge.runlog import RunFiles

    files = RunFiles(tmp_path)
    files.metrics_path = tmp_path / "a-folder"
    files.metrics_path.mkdir()
    files.log({"step": 1})
    files.log({"step": 2})
    err = capsys.readouterr().err
    assert err.count("cannot append to") == 1 and "training goes on" in err


def _env(tmp: Path) -> dict:
    return {**os.environ, "XDG_CACHE_HOME": str(tmp / "cache"), "GANFORGE_DATA": "", "OMP_NUM_THREADS": "1"}


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="no SIGHUP on this platform")
def test_sighup_saves_a_checkpoint_as_sigterm_does(tmp_path):
    argv = [sys.executable, "-m", "ganforge", *_tiny(tmp_path, "hup", 100000)]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=_env(tmp_path))
    run = tmp_path / "runs" / "hup"
    deadline = time.time() + 120
    while not (run / "checkpoints" / "step_0000006.pt").exists():
        assert time.time() < deadline and proc.poll() is None, proc.stderr.read() if proc.poll() is not None else ""
        time.sleep(0.05)
    proc.send_signal(signal.SIGHUP)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 129, err
    assert "stopped by SIGHUP" in err
    assert load_checkpoint(run / "checkpoints" / "last.pt")["step"] > 6


def test_a_closed_output_pipe_does_not_kill_the_run(tmp_path):
    # `ganforge train ... 2>&1 | head -c 200`: the reader goes away after the first lines
    cmd = " ".join(shlex.quote(a) for a in [sys.executable, "-m", "ganforge", *_tiny(tmp_path, "pipe", 60)])
    cmd = cmd.replace("--no-progress", "")  # the progress bar writes often: it meets the closed pipe first
    done = subprocess.run(["bash", "-c", f"{cmd} 2>&1 | head -c 200 >/dev/null; echo ${{PIPESTATUS[0]}}"],
                          capture_output=True, text=True, env=_env(tmp_path), timeout=300)  # fmt: skip
    assert done.stdout.strip() == "0", done.stdout + done.stderr
    final = load_checkpoint(tmp_path / "runs" / "pipe" / "checkpoints" / "final.pt")
    assert final["step"] == 60
