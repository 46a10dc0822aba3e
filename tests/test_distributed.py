"""Data-parallel training with 2 gloo processes on the CPU (`ganforge train --nproc 2`, i.e. torchrun):
ranks stay in lockstep, a BN-free model matches one process with the same global batch, rank 0
alone writes, resume works, and what cannot work is refused before any work."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time

import pytest
import torch
import torch.distributed as tdist

from ganforge.checkpoint import load_checkpoint
from ganforge.config import ConfigError, build_config
from ganforge.distributed import Dist, init_distributed
from ganforge.train import _check_distributed, train
from tests.conftest import ROOT, tiny


def ganforge_cli(*args: str, shm: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)]), "OMP_NUM_THREADS": "1",
           "GANFORGE_SHM_ALLREDUCE": "1" if shm else "0"}  # fmt: skip
    return subprocess.run([sys.executable, "-m", "ganforge", *args], capture_output=True, text=True, env=env,
                          timeout=600)  # fmt: skip


def events(run, kind):
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r.get("event") == kind]


POINTS = ["--data", "ring8", "--model", "mlp-plain", "--batch-size", "32", "--steps", "8", "--precision", "fp32",
          "--no-progress", "--set", "model.z_dim=2", "model.g_channels=16", "model.d_channels=16",
          "train.checkpoint_every=4", "monitor.every=null", "train.device=cpu"]  # fmt: skip


@pytest.mark.parametrize("shm, update, extra", [(True, "alternating", ()), (False, "alternating", ()),
                                               (True, "simultaneous", ()),
                                               (True, "alternating", ("loss.name=wgan", "reg.gp_weight=10"))],
                         ids=["shared-memory-sum", "gloo-all-reduce", "simultaneous", "wgan-gp"])  # fmt: skip
def test_two_processes_match_one_process_with_the_same_global_batch(tmp_path, shm, update, extra):
    # the simultaneous update averages G's and D's gradients in one sum (that it is one: tests/test_train.py);
    # wgan-gp: GP's interpolation weights are drawn for the global batch, each rank taking its share (issue #28)
    points = [*POINTS, f"train.update={update}", *extra]
    one = ganforge_cli("train", *points, "--runs-dir", str(tmp_path), "--name", "one")
    assert one.returncode == 0, one.stderr[-2000:]
    two = ganforge_cli("train", "--nproc", "2", *points, "--runs-dir", str(tmp_path), "--name", "two", shm=shm)
    assert two.returncode == 0, two.stderr[-2000:]
    assert f"global batch: 2 processes x 16, gloo{' + shared memory' if shm else ')'}" in two.stderr
    a = load_checkpoint(tmp_path / "one" / "checkpoints" / "final.pt")
    b = load_checkpoint(tmp_path / "two" / "checkpoints" / "final.pt")
    assert a["step"] == b["step"] == 8 and a["nimg"] == b["nimg"] == 8 * 32
    for net in ("G", "D"):
        for name, p in a[net].items():
            assert torch.allclose(p, b[net][name], rtol=1e-4, atol=1e-5), (net, name, (p - b[net][name]).abs().max())
    moved = max((a["G"][k] - load_checkpoint(tmp_path / "one" / "checkpoints" / "step_0000004.pt")["G"][k]).abs().max()
                for k in a["G"])  # fmt: skip
    assert moved > 1e-3  # the comparison is not between two untrained nets
    assert events(tmp_path / "two", "ranks")[0]["max_param_difference"] == 0.0
    start = events(tmp_path / "two", "start")[0]
    assert (start["processes"], start["batch_per_process"], start["global_batch"]) == (2, 16, 32)


def test_two_processes_in_lockstep_write_once_and_resume(tmp_path):
    args = ["--data", "mnist-5k", "--batch-size", "8", "--steps", "6", "--no-progress", "--runs-dir", str(tmp_path),
            "--name", "bn", "--set", "data.limit=64", "data.download=false", "model.g_channels=4", "model.d_channels=4",
            "model.z_dim=8", "train.checkpoint_every=3", "train.log_every=2", "train.device=cpu"]  # fmt: skip
    first = ganforge_cli("train", "--nproc", "2", *args)
    assert first.returncode == 0, first.stderr[-2000:]
    run = tmp_path / "bn"
    assert [p.name for p in tmp_path.iterdir()] == ["bn"]  # one run folder, made by rank 0
    assert first.stderr.count("ganforge: done.") == 1  # one process speaks
    # parameters identical on every rank at the end (batch norm in G and D included)
    assert [e["max_param_difference"] for e in events(run, "ranks")] == [0.0]
    again = ganforge_cli("train", "--nproc", "2", "--resume", str(run), "--steps", "10", "--no-progress")
    assert again.returncode == 0, again.stderr[-2000:]
    assert load_checkpoint(run / "checkpoints" / "final.pt")["step"] == 10
    # and again after the resumed session (the first session's record survives the resume)
    assert [e["max_param_difference"] for e in events(run, "ranks")] == [0.0, 0.0]
    assert [e["step"] for e in events(run, "end")] == [6, 10]
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()
             if "event" not in json.loads(line)]  # fmt: skip
    assert steps == [2, 4, 6, 8, 10]  # every log line once: only rank 0 writes
    assert [e["processes"] for e in events(run, "resume")] == [2]


@pytest.mark.parametrize("local, switch, one_machine, shm", [(None, None, True, True), ("2", "0", True, False),
                                                          ("1", None, False, False)])
def test_init_distributed_reads_where_the_ranks_run(monkeypatch, local, switch, one_machine, shm):
    monkeypatch.setattr(tdist, "is_initialized", lambda: True)  # as if torchrun's group were joined
    for key, value in {"WORLD_SIZE": "2", "RANK": "1", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": local,
                       "GANFORGE_SHM_ALLREDUCE": switch}.items():  # fmt: skip
        if value is None:
            monkeypatch.delenv(key, raising=False)
        else:
            monkeypatch.setenv(key, value)
    d = init_distributed(torch.device("cpu"))
    assert (d.rank, d.world, d.backend, d.one_machine, d.shm_allowed) == (1, 2, "gloo", one_machine, shm)


def test_what_several_processes_cannot_do_is_refused_before_any_work(tmp_path):
    cfg = build_config(overrides=tiny(tmp_path))
    _check_distributed(cfg, Dist())  # one process: nothing to refuse
    two = Dist(rank=0, world=2)
    odd = build_config(overrides={**tiny(tmp_path), "train": {**tiny(tmp_path)["train"], "batch_size": 7}})
    with pytest.raises(ConfigError, match="split evenly over the 2 processes"):
        _check_distributed(odd, two)
    rollback = build_config(overrides={**tiny(tmp_path), "monitor": {"every": 2, "on_collapse": "rollback"}})
    _check_distributed(rollback, two)  # one machine: every rank can reload rank 0's healthy.pt
    with pytest.raises(ConfigError, match="not across machines"):
        _check_distributed(rollback, Dist(rank=0, world=2, one_machine=False))
    sync_bn = build_config(overrides={**tiny(tmp_path), "train": {**tiny(tmp_path)["train"], "sync_bn": True}})
    with pytest.raises(ConfigError, match="sync_bn needs several processes on CUDA"):
        train(sync_bn, progress=False)
    assert not (tmp_path / "runs").exists()
    bad = ganforge_cli("train", "--nproc", "2", "--batch-size", "7", "--data", "mnist-5k", "--steps", "2",
                       "--runs-dir", str(tmp_path / "x"), "--set", "data.download=false")  # fmt: skip
    assert bad.returncode != 0 and "split evenly" in bad.stderr
    assert not (tmp_path / "x").exists()


def test_dist_helpers_on_one_process():
    d = Dist()
    x = torch.arange(6)
    assert d.shard(x) is x and d.any(True, False) == [True, False] and d.mean([1.0, 2.0]) == [1.0, 2.0]
    halves = [Dist(rank=r, world=2).shard(x).tolist() for r in (0, 1)]
    assert halves == [[0, 1, 2], [3, 4, 5]]


def test_two_processes_roll_back_together_and_stop_together(tmp_path):
    """A learning rate that makes D's weights NaN: every rank sees the divergence at the same step,
    rolls back to rank 0's healthy.pt with lowered rates, and all stop together at the limit."""
    args = ["--data", "mnist-5k", "--batch-size", "8", "--steps", "40", "--no-progress", "--runs-dir", str(tmp_path),
            "--name", "rb", "--precision", "fp32", "--set", "data.limit=64", "data.download=false",
            "model.g_channels=4", "model.d_channels=4", "model.z_dim=8", "train.device=cpu", "optim.d_lr=1e30",
            "monitor.every=2", "monitor.warmup=0", "monitor.on_collapse=rollback", "monitor.max_rollbacks=2",
            "monitor.lr_factor=0.5"]  # fmt: skip
    done = ganforge_cli("train", "--nproc", "2", *args)
    assert done.returncode != 0
    assert "already rolled back 2 times" in done.stderr  # stopped at the limit, not hung
    run = tmp_path / "rb"
    rollbacks = events(run, "rollback")
    assert [r["rollbacks"] for r in rollbacks] == [1, 2]  # logged once each: by rank 0
    assert rollbacks[1]["d_lr"] == pytest.approx(1e30 * 0.25)


def join_or_fail(ctx, seconds: float, message: str) -> None:
    """Wait for torch.multiprocessing's processes; past `seconds`, kill them and fail with `message`."""
    deadline = time.monotonic() + seconds
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail(message)


def _shm_worker(rank: int, world: int, store: str, out: str, barrier: str) -> None:  # one rank of the test below
    import time

    import torch.distributed as tdist

    from ganforge.distributed import SharedMemorySum

    torch.set_num_threads(1)
    os.environ["GANFORGE_SHM_BARRIER"] = barrier
    tdist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    d = Dist(rank=rank, world=world, backend="gloo", shm_allowed=True)
    wrong = 0
    for call in range(200):  # back to back, no other collective between calls: only the buffer keeps order
        x = torch.full((1000,), float(1000 * call + rank))
        shm = SharedMemorySum.made_for(d, x.numel(), x.dtype)
        if (call + rank) % 3 == 0:
            time.sleep(0.002)  # one rank lags now and then, so a rank that overwrote a half too soon would show
        shm.average([x], world)  # the exact sum of exact integers, then the same division on every rank
        wrong += int(not torch.equal(x, torch.full((1000,), float(world * 1000 * call + sum(range(world)))).div_(world)))
    y = torch.randn(1500, generator=torch.Generator().manual_seed(rank))  # a second size: its own buffer
    ref = y.clone()
    tdist.all_reduce(ref)
    ref /= world
    SharedMemorySum.made_for(d, y.numel(), y.dtype).average([y], world)
    gen = torch.Generator().manual_seed(10 + rank)  # gradients as sync_grads averages them: any layout, any shapes
    grads = [torch.randn(4, 3, 5, 5, generator=gen).contiguous(memory_format=torch.channels_last),
             torch.randn(7, generator=gen), torch.randn(3, 6, generator=gen)]  # fmt: skip
    means = [g.clone() for g in grads]
    for m in means:
        tdist.all_reduce(m)
        m /= world
    SharedMemorySum.made_for(d, sum(g.numel() for g in grads), torch.float32).average(grads, world)
    odd = torch.randn(4, 3, 5, 5)  # channels_last on rank 0 only: memory orders differ, every rank must refuse
    odd = odd.contiguous(memory_format=torch.channels_last) if rank == 0 else odd
    try:
        SharedMemorySum.made_for(d, odd.numel(), torch.float32).average([odd], world)
        refused = False
    except RuntimeError as e:
        refused = "different memory layouts" in str(e)
    torch.save({"wrong": wrong, "y": y, "ref": ref, "buffers": len(SharedMemorySum._made), "grads": grads,
                "means": means, "channels_last": grads[0].is_contiguous(memory_format=torch.channels_last),
                "refused": refused, "spin": SharedMemorySum._made[(rank, world, 1000, torch.float32)].spin},
               f"{out}.{rank}")  # fmt: skip
    tdist.destroy_process_group()


@pytest.mark.parametrize("world, barrier", [(2, "spin"), (3, "spin"), (2, "gloo")])
def test_shared_memory_sum_is_exact_in_lockstep_and_leaves_no_file(tmp_path, world, barrier):
    """World 2 and 3, with either barrier (polling the file, or gloo's all-reduce): 200 back-to-back means of exactly representable inputs are exact on every rank (a
    half of the double buffer reused too early would give wrong sums), a random mean matches gloo's
    all-reduce with the same bits on every rank, a list of gradients (one channels_last) is averaged in
    place as gloo's all-reduce averages it, ranks whose layouts differ all refuse, one buffer per size, and
    no file is left."""
    import torch.multiprocessing as mp

    shm_dir = "/dev/shm" if os.path.isdir("/dev/shm") else None
    before = set(os.listdir(shm_dir)) if shm_dir else set()
    ctx = mp.start_processes(_shm_worker, args=(world, str(tmp_path / "store"), str(tmp_path / "out"), barrier),
                             nprocs=world, join=False, start_method="spawn")  # fmt: skip
    join_or_fail(ctx, 120, "the shared-memory sum did not finish in 120 s (a deadlock?)")
    outs = [torch.load(tmp_path / f"out.{r}") for r in range(world)]
    assert [o["wrong"] for o in outs] == [0] * world
    polls = barrier == "spin" and platform.machine() in ("x86_64", "AMD64") and world <= len(os.sched_getaffinity(0))
    assert [o["spin"] for o in outs] == [polls] * world  # more ranks (of 1 thread each) than cores: gloo's barrier
    for o in outs:
        assert torch.equal(o["y"], outs[0]["y"]) and o["buffers"] == 4 and o["refused"]
        torch.testing.assert_close(o["y"], o["ref"])
        assert o["channels_last"]  # averaged in place, the layout kept
        for g, g0, m in zip(o["grads"], outs[0]["grads"], o["means"]):
            assert torch.equal(g, g0)  # the same bits on every rank
            torch.testing.assert_close(g, m)
    if shm_dir:
        assert not {f for f in set(os.listdir(shm_dir)) - before if f.startswith("ganforge-")}


def _lost_rank_worker(rank: int, store: str, out: str, how: str) -> None:  # one rank of the test below
    import torch.distributed as tdist

    from ganforge import distributed
    from ganforge.distributed import SharedMemorySum

    distributed.SPIN_TIMEOUT = 1.5
    torch.set_num_threads(1)  # a core per rank: the barrier polls
    tdist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    d = Dist(rank=rank, world=2, backend="gloo", shm_allowed=True)
    shm = SharedMemorySum.made_for(d, 10, torch.float32)
    if rank == 1:  # never comes to the sum: ends without a word to rank 0, or hangs (here: for 6 s)
        if how == "stuck":
            time.sleep(6)
        os._exit(0)
    t0 = time.monotonic()
    try:
        shm.average([torch.ones(10)], 2)
        message = ""
    except RuntimeError as e:
        message = str(e)
    torch.save({"message": message, "waited": time.monotonic() - t0, "spin": shm.spin}, out)
    os._exit(0)


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64") or len(os.sched_getaffinity(0)) < 2,
                    reason="the polling barrier needs x86 and a core per rank")  # fmt: skip
@pytest.mark.parametrize("how", ["ended", "stuck"])
def test_polling_barrier_reports_a_rank_that_ended_or_hangs_instead_of_waiting_forever(tmp_path, how):
    import torch.multiprocessing as mp

    ctx = mp.start_processes(_lost_rank_worker, args=(str(tmp_path / "store"), str(tmp_path / "out"), how),
                             nprocs=2, join=False, start_method="spawn")  # fmt: skip
    join_or_fail(ctx, 60, "rank 0 still waits for a rank that ended, after 60 s")
    out = torch.load(tmp_path / "out")
    assert out["spin"]
    if how == "ended":
        assert "rank 1" in out["message"] and "ended while rank 0 waited" in out["message"]
    else:
        assert "for rank(s) 1, which still run but did not arrive" in out["message"]
    assert out["waited"] < 10


def test_the_barrier_polls_only_where_it_is_safe_and_cores_are_free(monkeypatch):
    from ganforge import distributed
    from ganforge.distributed import spin_barrier

    monkeypatch.setattr(distributed.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(distributed.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setattr(distributed.torch, "get_num_threads", lambda: 1)
    monkeypatch.delenv("GANFORGE_SHM_BARRIER", raising=False)
    assert spin_barrier(2) and not spin_barrier(3)  # one core per rank, or not
    monkeypatch.setattr(distributed.torch, "get_num_threads", lambda: 2)
    assert spin_barrier(1) and not spin_barrier(2)  # 2 ranks x 2 threads on 2 cores: gloo's barrier
    monkeypatch.setattr(distributed.torch, "get_num_threads", lambda: 1)
    monkeypatch.setenv("GANFORGE_SHM_BARRIER", "gloo")
    assert not spin_barrier(2)
    monkeypatch.delenv("GANFORGE_SHM_BARRIER")
    monkeypatch.setattr(distributed.platform, "machine", lambda: "aarch64")
    assert not spin_barrier(2)  # weaker memory order: gloo's barrier


def test_each_cpu_rank_can_be_bound_to_its_own_cores_when_its_threads_fit(monkeypatch):
    from ganforge import distributed
    from ganforge.distributed import pin_cores, spin_barrier

    bound = []
    monkeypatch.setattr(distributed, "_job_cores", None)
    monkeypatch.setattr(distributed.os, "sched_getaffinity", lambda pid: {4, 5, 6, 7}, raising=False)
    monkeypatch.setattr(distributed.os, "sched_setaffinity", lambda pid, cores: bound.append(list(cores)),
                        raising=False)  # fmt: skip
    monkeypatch.setattr(distributed.platform, "machine", lambda: "x86_64")
    monkeypatch.setenv("GANFORGE_PIN_CORES", "1")
    monkeypatch.delenv("GANFORGE_SHM_BARRIER", raising=False)
    monkeypatch.setattr(distributed.torch, "get_num_threads", lambda: 1)
    assert pin_cores(1, 2) == [6, 7] and pin_cores(3, 4) == [7] and bound == [[6, 7], [7]]
    monkeypatch.setattr(distributed.os, "sched_getaffinity", lambda pid: {7}, raising=False)  # now bound
    assert spin_barrier(4)  # the decision counts the job's 4 cores, not the one this rank is bound to
    assert pin_cores(1, 2) == [6, 7]  # a second call slices the job's cores again, not this rank's slice
    monkeypatch.setattr(distributed, "_job_cores", None)
    monkeypatch.setattr(distributed.os, "sched_getaffinity", lambda pid: {4, 5, 6, 7}, raising=False)
    monkeypatch.setattr(distributed.torch, "get_num_threads", lambda: 3)
    assert pin_cores(0, 2) is None  # 3 threads do not fit on 2 cores: the OS shares them
    monkeypatch.setattr(distributed.torch, "get_num_threads", lambda: 1)
    monkeypatch.delenv("GANFORGE_PIN_CORES")  # off by default
    assert pin_cores(0, 2) is None and len(bound) == 3
