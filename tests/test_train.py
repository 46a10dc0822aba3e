import gc
import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml

import ganforge
from ganforge.checkpoint import load_checkpoint, save_checkpoint
from ganforge.config import ConfigError, build_config
from ganforge.guards import LoopGarbageCollector
from ganforge.train import lr_scale, train

from .conftest import tiny


def test_tiny_run_writes_everything(tmp_path, isolated_env):
    run = train(build_config(overrides=tiny(tmp_path)), progress=False)
    assert gc.isenabled() and gc.get_freeze_count() == 0  # the loop's own garbage collection undone
    for name in (
        "config.yaml",
        "metrics.jsonl",
        "samples.png",
        "losses.png",
        "checkpoints/last.pt",
        "checkpoints/final.pt",
        "samples/step_0000000.png",
    ):
        assert (run / name).is_file(), name
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "d_loss" in r]
    assert [r["step"] for r in steps] == [2, 4, 6]
    for key in ("g_loss", "d_real", "d_fake", "d_grad_norm", "g_grad_norm", "img_per_s", "nimg"):
        assert key in steps[0]
    assert 0 < steps[0]["d_real"] < 1 and steps[0]["img_per_s"] > 0
    ckpt = load_checkpoint(run / "checkpoints" / "final.pt")
    assert ckpt["step"] == 6 and ckpt["nimg"] == 48
    assert ckpt["config"]["data"]["name"] == "mnist-5k"  # the dataset really used is recorded
    assert ckpt["config"]["model"]["name"] == "dcgan28-classic"  # auto at 28x28


def _assert_same_state(a, b):
    for key in ("G", "D"):
        for name, tensor in a[key].items():
            assert torch.equal(tensor, b[key][name]), f"{key}.{name} differs"
    for key in ("opt_G", "opt_D"):
        for pid, st in a[key]["state"].items():
            for name, tensor in st.items():
                assert torch.equal(tensor, b[key]["state"][pid][name]), (
                    f"{key}[{pid}].{name} differs"
                )
    assert torch.equal(a["rng"]["torch"], b["rng"]["torch"])
    assert torch.equal(a["rng"]["noise"], b["rng"]["noise"])


def test_resume_is_exact(tmp_path, isolated_env):
    # 64 images / batch 8 = 8 steps an epoch: the stop at step 6 is mid-epoch, the run crosses into epoch 2.
    straight = tiny(tmp_path / "a", steps=12)
    run_a = train(build_config(overrides=straight), progress=False)
    half = tiny(tmp_path / "b", steps=6)
    run_b = train(build_config(overrides=half), progress=False)
    train(resume=run_b, overrides={"train": {"steps": 12}}, progress=False)
    a = load_checkpoint(run_a / "checkpoints" / "final.pt")
    b = load_checkpoint(run_b / "checkpoints" / "final.pt")
    assert a["step"] == b["step"] == 12 and a["nimg"] == b["nimg"]
    _assert_same_state(a, b)
    events = [
        json.loads(x).get("event") for x in (run_b / "metrics.jsonl").read_text().splitlines()
    ]
    assert "resume" in events


def test_different_seed_gives_a_different_run(tmp_path, isolated_env):
    a = load_checkpoint(
        train(build_config(overrides=tiny(tmp_path / "a")), progress=False) / "checkpoints/final.pt"
    )
    b = load_checkpoint(
        train(build_config(overrides=tiny(tmp_path / "b", seed=1)), progress=False)
        / "checkpoints/final.pt"
    )
    assert not torch.equal(a["G"]["net.0.weight"], b["G"]["net.0.weight"])


def test_resume_refuses_incompatible_changes(tmp_path, isolated_env):
    run = train(build_config(overrides=tiny(tmp_path)), progress=False)
    with pytest.raises(ConfigError, match="cannot change model.z_dim when resuming"):
        train(resume=run, overrides={"model": {"z_dim": 4}}, progress=False)


def test_existing_run_folder_is_never_overwritten(tmp_path, isolated_env):
    train(build_config(overrides=tiny(tmp_path)), progress=False)
    with pytest.raises(ConfigError, match="already holds a run.*--resume"):
        train(build_config(overrides=tiny(tmp_path)), progress=False)


def test_load_and_sample_api(tmp_path, isolated_env):
    run = train(build_config(overrides=tiny(tmp_path)), progress=False)
    gen = ganforge.load(run)
    imgs = gen.sample(5, seed=3)
    assert imgs.shape == (5, 1, 28, 28) and imgs.dtype == torch.uint8
    assert torch.equal(imgs, gen.sample(5, seed=3))
    floats = gen.sample(5, seed=3, output="float")
    assert floats.dtype == torch.float32 and floats.min() >= -1 and floats.max() <= 1
    assert not torch.equal(imgs, gen.sample(5, seed=4))


def test_sigint_saves_a_checkpoint_and_resume_continues(tmp_path, isolated_env):
    runs = tmp_path / "runs"
    cmd = [
        sys.executable,
        "-m",
        "ganforge",
        "train",
        "--data",
        "mnist-5k",
        "--steps",
        "100000",
        "--runs-dir",
        str(runs),
        "--name",
        "long",
        "--no-progress",
        "--device",
        "cpu",
        "--set",
        "model.g_channels=4",
        "model.d_channels=4",
        "train.batch_size=8",
        "data.limit=64",
        "train.log_every=1",
    ]
    env = {**os.environ, "XDG_CACHE_HOME": str(isolated_env / "cache")}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    metrics = runs / "long" / "metrics.jsonl"
    deadline = time.time() + 60
    while time.time() < deadline and (
        not metrics.exists() or metrics.read_text().count("d_loss") < 3
    ):
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Resume with: ganforge train --resume" in err
    stopped = load_checkpoint(runs / "long" / "checkpoints" / "last.pt")["step"]
    assert stopped >= 3
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "ganforge",
            "train",
            "--resume",
            str(runs / "long"),
            "--steps",
            str(stopped + 2),
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert load_checkpoint(runs / "long" / "checkpoints" / "final.pt")["step"] == stopped + 2


def test_resume_is_exact_with_ema_n_critic_regularizers_diffaugment_and_spectral_norm(
    tmp_path, isolated_env
):
    extra = {
        "reg": {
            "gp_weight": 10.0,
            "r1_gamma": 1.0,
            "r1_interval": 3,
            "diffaugment": "color,translation,cutout",
        }
    }

    def cfg(root, steps):
        o = tiny(root, steps=steps, n_critic=2, ema_beta=0.9)
        o["model"]["spectral_norm"] = True
        o["model"]["dropout"] = 0.3
        return build_config(overrides={**o, **extra, "loss": {"name": "wgan"}})

    run_a = train(cfg(tmp_path / "a", 8), progress=False)
    run_b = train(
        cfg(tmp_path / "b", 3), progress=False
    )  # stops mid-epoch (4 steps of 2 batches an epoch)
    train(resume=run_b, overrides={"train": {"steps": 8}}, progress=False)
    a = load_checkpoint(run_a / "checkpoints" / "final.pt")
    b = load_checkpoint(run_b / "checkpoints" / "final.pt")
    assert a["nimg"] == b["nimg"] == 8 * 2 * 8
    _assert_same_state(a, b)
    for name, tensor in a["G_ema"].items():
        assert torch.equal(tensor, b["G_ema"][name]), name
    assert not torch.equal(a["G_ema"]["net.0.weight"], a["G"]["net.0.weight"])


def test_critic_losses_log_raw_scores(tmp_path, isolated_env):
    o = tiny(tmp_path)
    o["loss"] = {"name": "hinge"}
    run = train(build_config(overrides=o), progress=False)
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    logged = [r for r in rows if "d_loss" in r]
    assert "d_real_score" in logged[0] and "d_real" not in logged[0]
    assert (run / "losses.png").is_file()


def test_one_g_forward_per_step_and_no_d_gradients_in_the_g_step():
    import copy

    from ganforge.losses import LOSSES
    from ganforge.models import build_models
    from ganforge.steps import d_step, g_step

    torch.manual_seed(0)
    G, D = build_models("dcgan28-classic", 8, 1, 4, 4, 0.0)
    calls = []
    G.register_forward_hook(lambda m, i, o: calls.append(1))
    opt_G, opt_D = torch.optim.Adam(G.parameters()), torch.optim.Adam(D.parameters())
    z, real = torch.randn(4, 8), torch.rand(4, 1, 28, 28) * 2 - 1
    loss = LOSSES["non-saturating"]
    fakes = G(z)  # made once, as train.py does with train.reuse_fakes
    G_ref, D_before = copy.deepcopy(G), copy.deepcopy(D)
    before = [p.detach().clone() for p in D.parameters()]
    d_step(G, D, opt_D, loss, real, z, fake_img=fakes)
    assert any(not torch.equal(a, p) for a, p in zip(before, D.parameters()))  # D was updated
    D_after = copy.deepcopy(D)
    opt_D.zero_grad(set_to_none=True)
    g_step(G, D, opt_G, loss, z, fake_img=fakes)
    assert len(calls) == 1  # the G step reused the D step's fakes
    assert all(p.grad is None for p in D.parameters())  # D frozen: no gradients computed for it
    # G's gradient is the one through the *updated* D (alternating updates), not through the D that
    # made the fakes' first scores
    through = lambda D_: torch.autograd.grad(loss.g_loss(D_(G_ref(z))), list(G_ref.parameters()))  # noqa: E731
    want, stale = through(D_after), through(D_before)
    assert all(torch.allclose(p.grad, w, rtol=1e-4, atol=1e-7) for p, w in zip(G.parameters(), want))
    assert not all(torch.allclose(w, s, rtol=1e-4, atol=1e-7) for w, s in zip(want, stale))
    n_calls = len(calls)  # G_ref is a copy of G, hook included
    g_step(G, D, opt_G, loss, z)  # without fakes it makes its own
    assert len(calls) == n_calls + 1


def test_several_critic_updates_give_the_g_step_fresh_latents_by_default(tmp_path, isolated_env):
    """WGAN-GP's Algorithm 1: after n_critic > 1 D updates the G step draws new latents (D has just fitted
    the last fake batch); with one D update the fakes are reused (pytorch/examples' DCGAN). Either can be set."""
    from ganforge.train import prepare

    def resolved(**train_overrides):
        return prepare(build_config(overrides=tiny(tmp_path, **train_overrides)))[0].train.reuse_fakes

    assert resolved(n_critic=1) is True and resolved(n_critic=2) is False
    assert resolved(n_critic=2, reuse_fakes=True) is True and resolved(n_critic=1, reuse_fakes=False) is False
    assert build_config("wgan-gp").train.n_critic == 5
    run = train(build_config(overrides=tiny(tmp_path, n_critic=2, steps=2)), progress=False)
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["reuse_fakes"] is False


def test_simultaneous_update_gives_each_net_the_gradient_of_its_own_loss(tmp_path, isolated_env):
    from ganforge.losses import LOSSES
    from ganforge.models import build_models
    from ganforge.precision import Precision
    from ganforge.steps import simultaneous_step

    torch.manual_seed(0)
    G, D = build_models("dcgan28-classic", 8, 1, 4, 4, 0.0)
    loss = LOSSES["non-saturating"]
    z, real = torch.randn(4, 8), torch.rand(4, 1, 28, 28) * 2 - 1
    # reference: both gradients at the same (pre-update) weights, by hand
    import copy

    G2, D2 = copy.deepcopy(G), copy.deepcopy(D)
    fake = G2(z)
    real_logits, fake_logits = D2(real), D2(fake)
    d_ref = torch.autograd.grad(loss.d_loss(real_logits, fake_logits), list(D2.parameters()), retain_graph=True)
    g_ref = torch.autograd.grad(loss.g_loss(fake_logits), list(G2.parameters()))
    sgd = lambda m: torch.optim.SGD(m.parameters(), lr=0.0)  # noqa: E731  (lr 0: keep the weights, read .grad)
    amp = Precision("fp32", torch.device("cpu"))
    summed: list = []  # what several processes would average: both nets' gradients, in one sum
    amp.sync = summed.append
    simultaneous_step(G, D, sgd(G), sgd(D), loss, real, z, precision=amp)
    for p, ref in [*zip(D.parameters(), d_ref), *zip(G.parameters(), g_ref)]:
        torch.testing.assert_close(p.grad, ref)
    assert [[id(p) for p in params] for params in summed] == [[id(p) for p in (*D.parameters(), *G.parameters())]]
    # and a run with it trains, logs and resumes like the alternating one
    with pytest.raises(ConfigError, match="set train.n_critic=1"):
        build_config(overrides=tiny(tmp_path, update="simultaneous", n_critic=2))
    run = train(build_config(overrides=tiny(tmp_path, update="simultaneous")), progress=False)
    assert load_checkpoint(run / "checkpoints" / "final.pt")["step"] == 6


@pytest.mark.parametrize("loss_name", ["non-saturating", "minimax", "wgan", "hinge", "relativistic"])
def test_simultaneous_shared_backward_matches_two_tapes(loss_name):
    """One backward through a per-sample D, G's input gradient rescaled per sample, gives both nets
    the gradients of the two-tape form (same dropout masks: same seed); hinge has zero D slopes
    beyond the margin, so G's input gradient takes its own backward, with the same result."""
    import copy

    from ganforge.losses import LOSSES
    from ganforge.models import build_models, per_sample
    from ganforge.steps import simultaneous_step

    torch.manual_seed(0)
    G, D = build_models("dcgan28", 8, 1, 4, 4, 0.3)  # the seed's D: dropout, no batch norm
    assert per_sample(D) and not per_sample(build_models("dcgan28-classic", 8, 1, 4, 4, 0.0)[1])
    assert not per_sample(build_models("dcgan28", 8, 1, 4, 4, 0.3, pack=2)[1])
    loss = LOSSES[loss_name]
    z, real = torch.randn(6, 8), torch.rand(6, 1, 28, 28) * 2 - 1
    with torch.no_grad():  # spread D's logits around -1, so hinge has fakes on both sides of its margin
        D.head[1].weight.mul_(2000.0)
        torch.manual_seed(1)  # the draws of the steps below: the same dropout masks
        fake = G(z)
        D(real)
        D.head[1].bias.sub_(D(fake).median() + 1.0)
    grads = []
    for shared in (False, True):
        G2, D2 = copy.deepcopy(G), copy.deepcopy(D)
        sgd = lambda m: torch.optim.SGD(m.parameters(), lr=0.0)  # noqa: E731  (keep the weights, read .grad)
        torch.manual_seed(1)
        _, _, _, fake_logits = simultaneous_step(G2, D2, sgd(G2), sgd(D2), loss, real, z, shared_backward=shared)
        grads.append([p.grad for p in [*D2.parameters(), *G2.parameters()]])
    if loss_name == "hinge":
        assert (fake_logits < -1).any() and (fake_logits > -1).any()
    for ref, got in zip(*grads):
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("logit", [-5.0, -40.0, -92.0])
def test_simultaneous_shared_backward_is_exact_when_d_rejects_the_fakes(logit, precision):
    """Fake logits far below 0 (D sure they are fake) make D's own slope tiny and G's large: the
    step then takes G's gradient by its own backward (no overflow, no underflow to 0)."""
    import copy

    from ganforge.losses import LOSSES
    from ganforge.models import build_models
    from ganforge.precision import Precision
    from ganforge.steps import simultaneous_step

    torch.manual_seed(0)
    G, D = build_models("dcgan28", 8, 1, 4, 4, 0.0)
    with torch.no_grad():
        D.head[1].bias.fill_(logit)  # every logit near `logit` (the rest of D adds ~1e-3)
    z, real = torch.randn(4, 8), torch.rand(4, 1, 28, 28) * 2 - 1
    amp = Precision(precision, torch.device("cpu"))
    grads = []
    for shared in (False, True):
        G2, D2 = copy.deepcopy(G), copy.deepcopy(D)
        sgd = lambda m: torch.optim.SGD(m.parameters(), lr=0.0)  # noqa: E731
        simultaneous_step(G2, D2, sgd(G2), sgd(D2), LOSSES["non-saturating"], real, z, precision=amp,
                          shared_backward=shared)  # fmt: skip
        grads.append([p.grad for p in G2.parameters()])
    for ref, got in zip(*grads):
        assert torch.isfinite(got).all()
        if precision == "bf16":  # bf16 rounds element by element: compare whole tensors
            assert torch.linalg.vector_norm(got - ref) <= 0.03 * torch.linalg.vector_norm(ref)
        else:
            torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-7)
    assert any(g.abs().max() > 0 for g in grads[1])  # G still learns


def test_linear_lr_decay_schedule_reaches_the_optimizers_and_resumes_exactly(tmp_path, isolated_env):
    assert [lr_scale(s, 8, "linear", 0.5) for s in range(8)] == [1, 1, 1, 1, 1, 0.75, 0.5, 0.25]
    assert lr_scale(0, 8, "linear", 0.0) == 1 and lr_scale(7, 8, "linear", 0.0) == 1 / 8
    assert lr_scale(7, 8, "none", 0.0) == 1
    overrides = tiny(tmp_path, steps=8, checkpoint_every=3, keep_checkpoints=8)
    overrides["optim"] = {"lr_decay": "linear", "decay_start": 0.5}
    run = train(build_config(overrides=overrides), progress=False)
    straight = load_checkpoint(run / "checkpoints" / "final.pt")
    for opt in ("opt_G", "opt_D"):  # the last step (index 7) ran at a quarter of the rate
        group = straight[opt]["param_groups"][0]
        assert group["base_lr"] == pytest.approx(2e-4) and group["lr"] == pytest.approx(0.25 * 2e-4)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    logged = {r["step"]: r["g_lr"] for r in rows if "g_lr" in r}  # every log_every=2 steps
    assert logged == pytest.approx({2: 2e-4, 4: 2e-4, 6: 0.75 * 2e-4, 8: 0.25 * 2e-4})  # steps 1, 3, 5, 7 ran
    # redo steps 3..8 from the step-3 checkpoint: the schedule is a function of the step, so the same run
    train(resume=run, resume_from="step_0000003.pt", progress=False)
    _assert_same_state(straight, load_checkpoint(run / "checkpoints" / "final.pt"))
    with pytest.raises(ConfigError, match="optim.decay_start"):
        build_config(overrides={"optim": {"lr_decay": "linear", "decay_start": 1.0}})
    with pytest.raises(ConfigError, match="only applies with a schedule"):
        build_config(overrides={"optim": {"decay_start": 0.5}})


def test_cosine_ramps_of_lr_gamma_beta2_and_ema_reach_the_run_and_resume_exactly(tmp_path, isolated_env):
    """ramp.* (R3GAN's cosine ramps): start, middle and end values; what the optimizers, the penalty and
    the EMA get at each step; a resume from a checkpoint mid-ramp is the same run."""
    from ganforge.train import cosine_ramp, ramped_ema_beta

    assert cosine_ramp(0, 40, 1.0, 0.25) == 1.0 and cosine_ramp(20, 40, 1.0, 0.25) == pytest.approx(0.625)
    assert cosine_ramp(40, 40, 1.0, 0.25) == 0.25 and cosine_ramp(400, 40, 1.0, 0.25) == 0.25
    assert cosine_ramp(10, 40, 0.0, 1.0) == pytest.approx((1 - math.cos(math.pi / 4)) / 2)
    ramp = {"images": 40, "lr_final": 0.25, "gamma_final": 0.1, "beta2_final": 0.99, "ema_start": 0.5}
    overrides = tiny(tmp_path, steps=8, checkpoint_every=3, keep_checkpoints=8, ema_beta=0.9)
    overrides.update(ramp=ramp, reg={"r1_gamma": 1.0, "r2_gamma": 0.5, "r1_interval": 1},
                     optim={"beta2": 0.9}, loss={"name": "relativistic"})  # fmt: skip
    cfg = build_config(overrides=overrides)
    run = train(cfg, progress=False)
    straight = load_checkpoint(run / "checkpoints" / "final.pt")
    for opt in ("opt_G", "opt_D"):  # the last step (7) began at 56 images, past the ramp's 40
        group = straight[opt]["param_groups"][0]
        assert group["lr"] == pytest.approx(0.25 * 2e-4) and group["betas"][1] == pytest.approx(0.99)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    logged = {r["step"]: r["g_lr"] for r in rows if "g_lr" in r}  # step k+1 logs the rate step k ran at
    assert logged == pytest.approx({k + 1: 2e-4 * cosine_ramp(8 * k, 40, 1.0, 0.25) for k in (1, 3, 5, 7)})
    assert ramped_ema_beta(cfg.train, cfg.ramp, 1000, 0) == 0.5  # the EMA ramp's start ...
    assert ramped_ema_beta(cfg.train, cfg.ramp, 1000, 40) == pytest.approx(0.9)  # ... and its end
    # gamma: the penalty of the objective at 20 images is halfway between 1 and 0.1 (cosine)
    from ganforge.train import ramped_gammas

    class _Obj:
        reg = type("R", (), {"r1_gamma": 1.0, "r2_gamma": 0.5})()

    obj = _Obj()
    ramped_gammas(obj, cfg.reg, cfg.ramp, 20)
    assert obj.reg.r1_gamma == pytest.approx(0.55) and obj.reg.r2_gamma == pytest.approx(0.275)
    # mid-ramp resume (step 3 = 24 of 40 images): the same run
    train(resume=run, resume_from="step_0000003.pt", progress=False)
    resumed = load_checkpoint(run / "checkpoints" / "final.pt")
    _assert_same_state(straight, resumed)
    for name, tensor in straight["G_ema"].items():
        assert torch.equal(tensor, resumed["G_ema"][name]), name
    with pytest.raises(ConfigError, match="ramp.lr_final: is set but ramp.images is not"):
        build_config(overrides={"ramp": {"lr_final": 0.25}})
    with pytest.raises(ConfigError, match="ramp.ema_start: the run keeps no G EMA"):
        build_config(overrides={"ramp": {"images": 100, "ema_start": 0.5}})
    with pytest.raises(ConfigError, match=r"ramp.beta2_final: must be in \[0, 1\)"):
        build_config(overrides={"ramp": {"images": 100, "beta2_final": 1.0}})


def test_resume_of_a_checkpoint_with_an_older_adam_uses_this_runs_fused_kernel(tmp_path, isolated_env):
    run = train(build_config(overrides=tiny(tmp_path, steps=3)), progress=False)
    path = run / "checkpoints" / "last.pt"
    state = load_checkpoint(path)
    for opt in ("opt_G", "opt_D"):  # as written before fused Adam and the lr schedule
        for group in state[opt]["param_groups"]:
            group["fused"] = None
            del group["base_lr"]
    save_checkpoint(path, state)
    train(resume=run, overrides={"train": {"steps": 5}}, progress=False)
    final = load_checkpoint(run / "checkpoints" / "final.pt")
    for opt in ("opt_G", "opt_D"):
        group = final[opt]["param_groups"][0]
        assert group["fused"] is True and group["base_lr"] == pytest.approx(2e-4)


def test_relativistic_g_step_judges_each_fake_against_its_own_real():
    """G's gradient is that of mean softplus(D(x_i) - D(G(z_i))), D's real scores taken afresh without a
    graph; top-k keeps each kept fake with its own real; without a real batch the step says so."""
    import copy

    from ganforge.losses import LOSSES
    from ganforge.models import build_models
    from ganforge.steps import g_step

    torch.manual_seed(0)
    G, D = build_models("dcgan28-classic", 8, 1, 4, 4, 0.0)
    loss = LOSSES["relativistic"]
    z, real = torch.randn(6, 8), torch.rand(6, 1, 28, 28) * 2 - 1
    sgd = lambda m: torch.optim.SGD(m.parameters(), lr=0.0)  # noqa: E731  (keep the weights, read .grad)
    for keep in (None, 3):
        G2, D2 = copy.deepcopy(G), copy.deepcopy(D)
        fake_logits = D2(G2(z))
        with torch.no_grad():
            real_logits = D2(real)
        if keep is not None:
            fake_logits, kept = fake_logits.topk(keep)
            real_logits = real_logits[kept]
        ref = torch.autograd.grad(loss.g_loss(fake_logits, real_logits), list(G2.parameters()))
        G3, D3 = copy.deepcopy(G), copy.deepcopy(D)
        g_step(G3, D3, sgd(G3), loss, z, real_img=real, keep=keep)
        for p, r in zip(G3.parameters(), ref):
            torch.testing.assert_close(p.grad, r)
        assert all(p.grad is None for p in D3.parameters())
    with pytest.raises(ValueError, match="needs a real batch"):
        g_step(G, D, sgd(G), loss, z)


def test_r2_penalises_the_fakes_on_the_lazy_steps(tmp_path, isolated_env, monkeypatch):
    import importlib

    steps = importlib.import_module("ganforge.steps")  # where make_penalty calls r1_penalty
    calls = []
    real_r1 = steps.r1_penalty
    monkeypatch.setattr(steps, "r1_penalty", lambda D, x, *a: calls.append(x) or real_r1(D, x, *a))
    counts = {}
    for r2 in (0.0, 0.5):
        calls.clear()
        overrides = tiny(tmp_path / str(r2))
        overrides["loss"] = {"name": "relativistic"}
        overrides["reg"] = {"r1_gamma": 0.5, "r2_gamma": r2, "r1_interval": 2}
        run = train(build_config(overrides=overrides), progress=False)
        counts[r2] = len(calls)
        assert load_checkpoint(run / "checkpoints" / "final.pt")["step"] == 6
    assert counts == {0.0: 3, 0.5: 6}  # D updates 0, 2 and 4: R1 alone, then R1 and R2
    reals, fakes = calls[0::2], calls[1::2]
    assert all(x.shape == y.shape == (8, 1, 28, 28) for x, y in zip(reals, fakes))
    assert all(not torch.equal(x, y) for x, y in zip(reals, fakes))
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(math.isfinite(r["g_loss"]) for r in rows if "g_loss" in r)
    with pytest.raises(ConfigError, match="reg.r2_gamma"):
        build_config(overrides={"reg": {"r2_gamma": -1.0}})


def test_mode_seeking_term_enters_the_g_step_and_is_refused_where_it_cannot(tmp_path, isolated_env, monkeypatch):
    import importlib

    objectives = importlib.import_module("ganforge.objectives")  # where the GAN objective calls g_step
    seen = []
    real_g_step = objectives.g_step

    def spy(G, D, opt_G, loss, z, *args, **kwargs):
        seen.append((kwargs["mode_seeking"], kwargs["z_pair"]))
        return real_g_step(G, D, opt_G, loss, z, *args, **kwargs)

    monkeypatch.setattr(objectives, "g_step", spy)
    finals = {}
    for weight in (0.0, 1.0):
        overrides = tiny(tmp_path / str(weight), steps=3)
        overrides["model"]["latent_codes"] = 4
        overrides["reg"] = {"mode_seeking": weight}
        run = train(build_config(overrides=overrides), progress=False)
        finals[weight] = load_checkpoint(run / "checkpoints" / "final.pt")["G"]
    off, on = seen[:3], seen[3:]
    assert all(w == 0.0 and pair is None for w, pair in off)
    assert all(w == 1.0 and pair.shape == (8, 8) for w, pair in on)
    assert any(not torch.equal(finals[0.0][k], finals[1.0][k]) for k in finals[0.0])  # the term changed G
    with pytest.raises(ConfigError, match="reg.mode_seeking"):
        build_config(overrides={"reg": {"mode_seeking": 1.0}, "train": {"update": "simultaneous"}})
    with pytest.raises(ConfigError, match="reg.mode_seeking"):
        build_config(overrides={"reg": {"mode_seeking": 1.0}, "loss": {"name": "elbo"}})


def test_loop_garbage_collector_collects_on_its_own_steps_and_then_restores_the_collector():
    import weakref

    class Cycle:
        pass

    was = gc.isenabled()
    gc.enable()
    try:
        collector = LoopGarbageCollector()
        assert not gc.isenabled() and gc.get_freeze_count() > 0  # off, with the objects made before frozen
        cycle = Cycle()
        cycle.me = cycle
        alive = weakref.ref(cycle)
        del cycle
        collector.step(LoopGarbageCollector.EVERY - 1)
        assert alive() is not None  # not this step: nothing else collects it
        collector.step(2 * LoopGarbageCollector.EVERY)
        assert alive() is None
        collector.close()
        assert gc.isenabled() and gc.get_freeze_count() == 0
    finally:
        gc.unfreeze()
        gc.enable() if was else gc.disable()


def _bar_setup(step: int, total: int):
    from types import SimpleNamespace

    s = SimpleNamespace(total_steps=total, cfg=SimpleNamespace(train=SimpleNamespace(batch_size=64)))
    return s, SimpleNamespace(step=step)


def test_the_progress_bar_counts_steps_and_a_resumed_bar_times_only_its_own_steps(monkeypatch, capsys):
    """Issue #30: the bar counts steps (as --steps does), and after a resume (or a rollback: a new bar at
    the restored step) its rate and time left come from the steps it ran, not from all steps since 0."""
    from ganforge.train import progress_bar

    clock = {"t": 1000.0}
    monkeypatch.setattr("tqdm.std.time", lambda: clock["t"])
    bar = progress_bar(*_bar_setup(900, 1000))  # resumed at step 900 of 1000
    for _ in range(10):  # 10 steps, 1 s each
        clock["t"] += 1.0
        bar.update()
    text, rate = str(bar), bar.format_dict["rate"]
    bar.close()
    # 1 step/s from its own 10 steps: 90 s left (counting 910 steps in 10 s would say 0.1 s)
    assert "910/1000 [00:10<01:30,  1.00step/s]" in text, text
    assert rate == pytest.approx(1.0)


def test_the_progress_bar_shows_steps_and_images_per_second(tmp_path, isolated_env, capsys):
    import re

    train(build_config(overrides=tiny(tmp_path)), progress=True)
    err = capsys.readouterr().err
    final = err.replace("\r", "\n").strip().splitlines()
    line = next(text for text in reversed(final) if "6/6" in text)
    assert re.search(r"6/6 \[.*(step/s|s/step), d_loss=\d+\.\d{3}, g_loss=\d+\.\d{3}, img/s=\d+\]", line), line
