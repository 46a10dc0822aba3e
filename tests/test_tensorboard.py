"""train.tensorboard: a TensorBoard copy of metrics.jsonl (the scalars, the sample grids, the in-training
eval), read back from the event files; a resume hides what it redoes, as metrics.jsonl drops it."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from ganforge import build_config, train
from ganforge.config import ConfigError
from tests.conftest import tiny


def _records(run) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _overrides(tmp_path) -> dict:
    overrides = tiny(tmp_path, steps=6, tensorboard=True, sample_every=3, eval_every=3, eval_n=50)
    overrides["monitor"] = {"every": 3, "n": 8}
    return overrides


def _read_back(run):
    accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    events = accumulator.EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    return events


def test_tensorboard_holds_the_logs_scalars_the_grids_and_the_eval(tmp_path, isolated_env):
    pytest.importorskip("tensorboard")
    run = train(build_config(overrides=_overrides(tmp_path)), progress=False)
    events = _read_back(run)
    records = _records(run)
    scalars = events.Tags()["scalars"]
    rows = [r for r in records if "d_loss" in r]
    for key in ("d_loss", "g_loss", "d_real", "d_grad_norm", "img_per_s", "g_lr", "nimg"):
        logged = events.Scalars(f"train/{key}")
        assert [e.step for e in logged] == [r["step"] for r in rows] == [2, 4, 6]
        assert [e.value for e in logged] == pytest.approx([r[key] for r in rows], rel=1e-6)
    health = [r for r in records if r.get("event") == "health"]
    assert [e.value for e in events.Scalars("health/diversity_ratio")] == pytest.approx(
        [r["diversity_ratio"] for r in health], rel=1e-6)  # fmt: skip
    assert [e.value for e in events.Scalars("health/healthy")] == [float(r["healthy"]) for r in health]
    (evals,) = {r["metric"] for r in records if r.get("event") == "eval"}
    assert f"eval/{evals}" in scalars
    logged = events.Scalars(f"eval/{evals}")
    measured = [r for r in records if r.get("event") == "eval"]
    assert [e.step for e in logged] == [r["step"] for r in measured] == [3, 6]
    assert [e.value for e in logged] == pytest.approx([r["value"] for r in measured], rel=1e-6)
    grids = events.Images("samples")
    assert sorted({e.step for e in grids}) == [0, 3, 6]  # the step-0 grid, every 3 steps, the end's
    with Image.open(run / "samples" / "step_0000000.png") as first:
        assert (grids[0].width, grids[0].height) == first.size


def test_a_resume_hides_the_steps_it_redoes(tmp_path, isolated_env):
    pytest.importorskip("tensorboard")
    run = train(build_config(overrides=_overrides(tmp_path)), progress=False)
    # from step 3: metrics.jsonl is cut back to that checkpoint and steps 4-6 are trained again
    train(resume=run, resume_from="step_0000003.pt", progress=False)
    events = _read_back(run)
    rows = [r for r in _records(run) if "d_loss" in r]
    logged = events.Scalars("train/d_loss")
    assert [e.step for e in logged] == [r["step"] for r in rows] == [2, 4, 6]  # once each: the redone ones
    assert [e.value for e in logged] == pytest.approx([r["d_loss"] for r in rows], rel=1e-6)
    assert len(list((run / "tensorboard").glob("events.out.tfevents.*"))) == 2


def test_tensorboard_missing_is_said_before_the_run_starts(tmp_path, isolated_env, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name.split(".")[0] == "tensorboard":
            raise ImportError("No module named 'tensorboard'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    with pytest.raises(ConfigError, match=r"pip install 'ganforge\[tensorboard\]'"):
        train(build_config(overrides=_overrides(tmp_path)), progress=False)
    assert not (tmp_path / "runs").exists()  # no run folder left behind
