"""train.precision: bf16 autocast on CPU trains, resumes exactly, and keeps weights in fp32."""

import json

import pytest
import torch

from ganforge.checkpoint import load_checkpoint
from ganforge.config import ConfigError, build_config
from ganforge.precision import Precision, cpu_has_fast_bf16, resolve_precision
from ganforge.steps import d_step
from ganforge.train import train

from .conftest import tiny
from .test_train import _assert_same_state


def test_precision_is_resolved_for_the_device():
    cpu = torch.device("cpu")
    assert resolve_precision("fp32", cpu) == "fp32"
    assert resolve_precision("auto", cpu) == ("bf16" if cpu_has_fast_bf16() else "fp32")
    with pytest.raises(ConfigError, match="fp16 autocast is for GPUs; on a CPU use bf16"):
        resolve_precision("fp16", cpu)
    with pytest.raises(ConfigError, match="'fp8' is not a valid choice"):
        build_config(overrides={"train": {"precision": "fp8"}})


@pytest.mark.parametrize("capability, expected",
                         [((9, 0), "fp32"), ((8, 0), "fp32"), ((7, 5), "fp16"), ((7, 0), "fp16"), ((6, 1), "fp32")])
def test_auto_precision_on_cuda_follows_the_capability(monkeypatch, capability, expected):
    """auto on a GPU: fp32 (run as TF32) from Ampere on, fp16 with loss scaling on Volta/Turing tensor cores,
    fp32 on older GPUs (no GPU needed)."""
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert resolve_precision("auto", torch.device("cuda")) == expected
    assert resolve_precision("bf16", torch.device("cuda")) == "bf16"  # an explicit choice is kept


def test_bf16_step_computes_in_bf16_and_keeps_fp32_weights():
    from ganforge.losses import LOSSES
    from ganforge.models import build_models

    torch.manual_seed(0)
    G, D = build_models("dcgan28-classic", 8, 1, 4, 4, 0.0)
    amp = Precision("bf16", torch.device("cpu"))
    G, D = G.to(memory_format=amp.memory_format), D.to(memory_format=amp.memory_format)
    seen = []
    D.features[0].register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    opt = torch.optim.Adam(D.parameters())
    real = (torch.rand(4, 1, 28, 28) * 2 - 1).contiguous(memory_format=torch.channels_last)
    d_loss, real_logits, _ = d_step(G, D, opt, LOSSES["non-saturating"], real, torch.randn(4, 8), precision=amp)
    assert seen and all(dtype == torch.bfloat16 for dtype in seen)  # the convolutions ran in bf16
    assert d_loss.dtype == real_logits.dtype == torch.float32  # the loss in fp32
    assert all(p.dtype == torch.float32 for p in D.parameters())  # the weights stay fp32
    assert torch.isfinite(d_loss)


def test_bf16_run_resumes_exactly(tmp_path, isolated_env):
    straight = tiny(tmp_path / "a", steps=8, precision="bf16")
    run_a = train(build_config(overrides=straight), progress=False)
    half = tiny(tmp_path / "b", steps=4, precision="bf16")
    run_b = train(build_config(overrides=half), progress=False)
    train(resume=run_b, overrides={"train": {"steps": 8}}, progress=False)
    a = load_checkpoint(run_a / "checkpoints" / "final.pt")
    b = load_checkpoint(run_b / "checkpoints" / "final.pt")
    _assert_same_state(a, b)
    assert a["config"]["train"]["precision"] == "bf16"


def test_compiled_training_writes_plain_checkpoints(tmp_path, isolated_env):
    import ganforge

    run = train(build_config(overrides=tiny(tmp_path, steps=2, compile=True)), progress=False)
    ckpt = load_checkpoint(run / "checkpoints" / "final.pt")
    assert not any("_orig_mod" in key for key in [*ckpt["G"], *ckpt["D"]])  # the modules' own names
    assert ganforge.load(run).sample(2, seed=0).shape == (2, 1, 28, 28)


class _BrokenCompiled(torch.nn.Module):
    """What torch.compile returned for dcgan32 in bf16 on an H200 (torch 2.11): a module that fails in
    PyTorch's own code. Shares the wrapped module's parameters, as a compiled module does."""

    def __init__(self, module):
        super().__init__()
        self.module = module

    def forward(self, *args):
        raise AssertionError("expected size 256==256, stride 16==1 at dim=1\nError in op: convolution_backward")


def test_a_compile_that_fails_inside_pytorch_falls_back_to_the_plain_modules(tmp_path, isolated_env, monkeypatch,
                                                                              capsys):  # fmt: skip
    """One process: the step is redone without compiling, the run finishes, the event is logged and said."""
    monkeypatch.setattr(torch, "compile", _BrokenCompiled)
    run = train(build_config(overrides=tiny(tmp_path, steps=4, compile=True)), progress=False)
    final = load_checkpoint(run / "checkpoints" / "final.pt")
    assert (final["step"], final["nimg"]) == (4, 4 * 8)  # the failed step was redone, not skipped
    events = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    failed = [e for e in events if e.get("event") == "compile_failed"]
    assert failed == [{"event": "compile_failed", "step": 0, "action": "eager",
                       "error": "AssertionError: expected size 256==256, stride 16==1 at dim=1"}]  # fmt: skip
    assert "the compiled step failed at step 0 (AssertionError: expected size" in capsys.readouterr().err


class _FailsInBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        raise AssertionError("stride assertion in the compiled backward")


class _BrokenInGStep(torch.nn.Module):
    """A compiled D whose backward fails only when G's step asks for it (D frozen, input needs grad), as
    the H200 failure did in G's backward; the D step itself works."""

    def __init__(self, module):
        super().__init__()
        self.module = module

    def forward(self, x, c=None):
        frozen = not any(p.requires_grad for p in self.module.parameters())
        return self.module(_FailsInBackward.apply(x) if frozen and x.requires_grad else x, c)


def test_a_compiled_g_step_that_fails_leaves_d_trainable_for_the_redone_step(tmp_path, isolated_env, monkeypatch):
    """No R1 (the default): if D stayed frozen after the failed G step, the redone D step could not backward."""
    monkeypatch.setattr(torch, "compile", lambda m: _BrokenInGStep(m) if hasattr(m, "head") else m)  # D only
    run = train(build_config(overrides=tiny(tmp_path, steps=3, compile=True)), progress=False)
    final = load_checkpoint(run / "checkpoints" / "final.pt")
    assert (final["step"], final["nimg"]) == (3, 3 * 8)
    events = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [e["step"] for e in events if e.get("event") == "compile_failed"] == [0]


def test_an_error_after_the_step_is_not_taken_for_a_compile_failure(tmp_path, isolated_env, monkeypatch):
    """Outside the D and G updates (here the EMA update) an error stops a compiled run as it stops any run."""
    import importlib

    train_mod = importlib.import_module("ganforge.train")

    def broken_ema(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(train_mod, "update_ema", broken_ema)
    monkeypatch.setattr(torch, "compile", lambda module: module)
    with pytest.raises(OSError, match="disk full"):
        train(build_config(overrides=tiny(tmp_path, steps=2, compile=True, ema_beta=0.9)), progress=False)


def test_raised_in_torch_compile_reads_the_traceback():
    from ganforge.guards import raised_in_torch_compile

    try:
        raise ValueError("plain")
    except ValueError as error:
        assert not raised_in_torch_compile(error)
    code = compile("raise AssertionError('generated')", "/tmp/torchinductor_root/7g/c7gl.py", "exec")
    try:
        exec(code)
    except AssertionError as error:
        assert raised_in_torch_compile(error)


def test_an_error_of_the_run_itself_is_not_hidden_by_the_compile_fallback(tmp_path, isolated_env, monkeypatch):
    """The plain step fails as well: that error stops the run (the fallback does not loop or swallow it)."""
    import importlib

    objectives = importlib.import_module("ganforge.objectives")  # where the GAN objective calls d_step

    def broken_d_step(*args, **kwargs):
        raise ValueError("a bug in the step")

    monkeypatch.setattr(objectives, "d_step", broken_d_step)
    monkeypatch.setattr(torch, "compile", lambda module: module)
    with pytest.raises(ValueError, match="a bug in the step"):
        train(build_config(overrides=tiny(tmp_path, steps=2, compile=True)), progress=False)


def test_cuda_speedups_sets_tf32_and_autotuner():
    """train.tf32 and cuDNN's autotuner, as `ganforge train` sets them on a CUDA device (the flags are
    process-wide and settable without a GPU)."""
    from ganforge.precision import cuda_speedups

    saved = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32, torch.backends.cudnn.benchmark)
    try:
        cuda_speedups(True)
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
        assert torch.backends.cudnn.benchmark
        cuda_speedups(False)
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
        assert torch.backends.cudnn.benchmark
    finally:
        (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32,
         torch.backends.cudnn.benchmark) = saved  # fmt: skip
