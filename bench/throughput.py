"""Training throughput: img/s, GFLOP/s and % of the machine's peak, peak memory, against plain PyTorch.

    python bench/throughput.py                                  # the default grid (about 10 minutes on 2 cores)
    python bench/throughput.py --models dcgan28 --batches 128 --precisions fp32 bf16
    python bench/throughput.py --device cuda --models dcgan32 resnet32 --batches 64 256 1024 --precisions fp32 bf16 fp16

For each (model, batch size, precision) a fresh subprocess builds the run `ganforge train` builds for that
config (`train.build_run`: the nets at the WIDTH below, dropout 0.3, z 100; `make_adam`'s Adam 2e-4, betas
(0.5, 0.999); the precision, autocast and memory layout `train.precision` resolves to; the GAN objective with
its defaults: non-saturating loss, one D update and a G update reusing its fakes), on random uint8 images in
place of a dataset, and times one training iteration as `train.loop` calls it: `objective.step(run)` (which
fetches the real batch and draws the latents itself), then the step counters. The loop's EMA, health checks,
logs and garbage collection are outside the timed step. In the same process, the same nets are trained the
usual plain-PyTorch way in eager fp32 (pytorch/examples' DCGAN loop: G's graph built during the D step, D run
on the fakes twice, D's parameter gradients computed during the G step; PyTorch's default Adam). Medians of
REPS repetitions; the ratio is ganforge / plain. For bf16 and fp16 (not compiled), ganforge's own fp32 step
on a run of its own (its own nets) is timed in the same alternation too: "vs ganforge fp32" is the precision's
gain measured within one run (img/s of that fp32 step in brackets; this row's peak RSS then includes that
third set of nets). With --compile the run is built with train.compile, so the step calls the compiled nets,
as training does. FLOPs of an iteration are counted with torch.utils.flop_counter (on the plain modules) and
set against the measured peak of a 2048^3 matmul in the same precision. Peak RSS is the subprocess's. Also:
the share of a step spent fetching the batch (`Feed.real_batch`: index slicing of the in-memory uint8 set +
conversion). Writes bench/results/throughput.json.

On CUDA (--device cuda) the timings synchronize the GPU, the matmul peak is an 8192^3 product, and peak
memory is the GPU's (torch.cuda.max_memory_allocated over the whole row). ganforge's steps run as
`ganforge train` runs them there: TF32 for fp32 matmuls and convolutions (train.tf32), the cuDNN autotuner,
NCHW in fp32 and channels_last in bf16/fp16 (fp16 with a GradScaler). The plain loop runs with PyTorch's
defaults (no TF32 for matmuls, cuDNN's TF32 convolutions, no autotuner), switched per call; cuDNN's cache of
chosen convolution plans is per process and not keyed by the autotuner switch, so the plain loop may run plans
that ganforge's step autotuned (docs/benchmarks.md). The fp32 peak is measured with TF32 allowed (the peak
ganforge's fp32 step can reach).

`bench_run` and `train_step` are shared with bench/layout_ab.py and bench/vs_keras.py.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import torch
import torch.nn.functional as F

from ganforge import build_config
from ganforge.config import Config, resolve
from ganforge.data import ImageDataset, to_float
from ganforge.distributed import Dist
from ganforge.models import MODELS, build_models
from ganforge.objectives import Objective
from ganforge.precision import cuda_speedups
from ganforge.runlog import RunFiles
from ganforge.train import Run, build_run

WIDTH = {"dcgan28": 64, "dcgan28-classic": 32, "dcgan32": 64, "dcgan64": 64, "resnet32": 128}


CPU = torch.device("cpu")


def bench_run(cfg: Config, images: torch.Tensor) -> tuple[Run, Objective]:
    """The run `ganforge train` builds for `cfg` (train.build_run: nets, optimizers, precision, memory
    layout, objective and its Feed), on `images` (uint8 [N, C, H, W]) in place of a dataset from disk: one
    process, no run folder, nothing written. The callers turn the health monitor off (monitor.every=None):
    it runs between steps, not in them, and would only featurize the random images at set-up."""
    ds = ImageDataset(images, torch.zeros(len(images), dtype=torch.long), name="random", source="bench: random uint8")
    cfg = resolve(cfg, ds.name, images.shape[1], len(ds))
    run, setup = build_run(cfg, ds, Dist(), RunFiles(Path(tempfile.gettempdir()), main=False), None)
    run.G.train()  # as train.loop does before its first step
    run.D.train()
    return run, setup.objective


def train_step(run: Run, objective: Objective) -> None:
    """One training iteration as train.loop runs it: the objective's step (train.iterate), then the
    counters that the next step's real batch and schedules read."""
    objective.step(run)
    run.step += 1
    run.nimg += objective.images_per_step


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def timed(fn, reps: int, inner: int, dev: torch.device = CPU) -> float:
    """Median seconds of one call of fn over `reps` repetitions of `inner` calls (after a warm-up)."""
    return interleaved([fn], reps, inner, dev)[0]


def interleaved(fns: list, reps: int, inner: int, dev: torch.device = CPU) -> list[float]:
    """Median seconds per call of each of `fns`, timed in alternation (ABAB...), so that drifts of the
    machine (clock, cache, other load) hit all alike. On a GPU each timing waits for the queued work."""
    for fn in fns:
        for _ in range(2):
            fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(reps):
        for fn, out in zip(fns, times):
            sync(dev)
            start = time.perf_counter()
            for _ in range(inner):
                fn()
            sync(dev)
            out.append((time.perf_counter() - start) / inner)
    return [statistics.median(t) for t in times]


def matmul_peak(dtype: torch.dtype, dev: torch.device) -> float:
    """The best of 10 timings of an n^3 matmul (n = 2048 on a CPU, 8192 on a GPU), in GFLOP/s: the
    machine's practical peak."""
    n = 8192 if dev.type == "cuda" else 2048
    a, b = torch.randn(n, n, dtype=dtype, device=dev), torch.randn(n, n, dtype=dtype, device=dev)
    a @ b
    best = min(timed(lambda: a @ b, 1, 3 if dev.type == "cuda" else 1, dev) for _ in range(10))
    return 2 * n**3 / best / 1e9


def pytorch_defaults() -> None:
    """PyTorch's own CUDA defaults, for the plain loop: no TF32 matmuls, TF32 convolutions, no autotuner."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cudnn.benchmark = False


def with_settings(fn, settings, dev: torch.device):
    """fn run under the process-wide CUDA settings `settings()` sets (a no-op on CPUs)."""
    if dev.type != "cuda":
        return fn

    def run() -> None:
        settings()
        fn()

    return run


def ganforge_step(model: str, batch: int, precision: str, images: torch.Tensor, device: str, compiled: bool = False):
    """ganforge's training iteration for (model, batch, precision) on `images`, run by `train_step` on the run
    `bench_run` builds (seed 0, the train.* defaults otherwise): returns (step, run, objective)."""
    cfg = build_config(overrides={
        "model": {"name": model, "g_channels": WIDTH[model], "d_channels": WIDTH[model]},
        "train": {"batch_size": batch, "precision": precision, "device": device, "compile": compiled},
        "monitor": {"every": None},
    })  # fmt: skip
    run, objective = bench_run(cfg, images)

    def step() -> None:
        train_step(run, objective)

    if run.device.type == "cuda":  # the plain loop switches to PyTorch's defaults for its calls: back to train's
        return with_settings(step, lambda: cuda_speedups(cfg.train.tf32), run.device), run, objective
    return step, run, objective


def one(model: str, batch: int, precision: str, reps: int, compiled: bool = False, device: str = "cpu") -> dict:
    torch.manual_seed(0)
    dev = torch.device(device)
    res = MODELS[model].resolution
    channels = 1 if res == 28 else 3
    images = torch.randint(0, 256, (max(batch * 8, 2048), channels, res, res), dtype=torch.uint8)
    step, run, objective = ganforge_step(model, batch, precision, images, device, compiled)
    feed = objective.feed

    from torch.utils.flop_counter import FlopCounterMode

    compiled_nets = run.G_run, run.D_run
    run.G_run, run.D_run = run.G, run.D  # counted on the plain modules (a compiled step runs the same maths)
    with FlopCounterMode(display=False) as counter:
        step()
    run.G_run, run.D_run = compiled_nets
    flops = counter.get_total_flops()
    start = time.perf_counter()
    step()  # the first iterations: they include torch.compile's compile time when compiled
    step()
    sync(dev)
    first = time.perf_counter() - start
    t_data = timed(lambda: feed.real_batch(run.step), reps, 20, dev)  # the next step's real batch

    # plain eager fp32, the same nets (their own copies), timed in alternation with ours
    images = feed.images  # (on the device)
    G2, D2 = build_models(model, 100, channels, WIDTH[model], WIDTH[model], 0.3)
    G2, D2 = G2.to(dev), D2.to(dev)
    opt_G2 = torch.optim.Adam(G2.parameters(), 2e-4, betas=(0.5, 0.999))  # the plain loop's default Adam
    opt_D2 = torch.optim.Adam(D2.parameters(), 2e-4, betas=(0.5, 0.999))

    def plain() -> None:
        real = to_float(images[:batch])
        fake = G2(torch.randn(batch, 100, device=dev))
        opt_D2.zero_grad()
        ones, zeros = torch.ones(batch, device=dev), torch.zeros(batch, device=dev)
        loss_d = F.binary_cross_entropy_with_logits(D2(real), ones) + F.binary_cross_entropy_with_logits(
            D2(fake.detach()), zeros)  # fmt: skip
        loss_d.backward()
        opt_D2.step()
        opt_G2.zero_grad()
        F.binary_cross_entropy_with_logits(D2(fake), ones).backward()
        opt_G2.step()

    fns = [step, with_settings(plain, pytorch_defaults, dev)]
    if run.precision.name != "fp32" and not compiled:  # ganforge's own fp32 step too: the precision's gain, in the same run
        fns.append(ganforge_step(model, batch, "fp32", images.cpu(), device)[0])
    times = interleaved(fns, reps, 5 if dev.type == "cpu" else 20, dev)
    t_ours, t_plain = times[:2]
    row = {
        "model": model, "resolution": res, "batch": batch, "precision": run.precision.name, "compiled": compiled,
        "first_iterations_s": first,
        "img_per_s": batch / t_ours, "plain_fp32_img_per_s": batch / t_plain, "ratio_vs_plain": t_plain / t_ours,
        "gflop_per_iter": flops / 1e9, "gflop_per_s": flops / t_ours / 1e9, "data_share": t_data / t_ours,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "device": device,
    }  # fmt: skip
    if dev.type == "cuda":
        row["peak_gpu_mb"] = torch.cuda.max_memory_allocated(dev) / 2**20
    if len(times) == 3:
        row.update(own_fp32_img_per_s=batch / times[2], ratio_vs_own_fp32=times[2] / t_ours)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["dcgan28", "dcgan28-classic", "dcgan32", "dcgan64"])
    parser.add_argument("--batches", nargs="+", type=int, default=[64, 128, 256])
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--compile", action="store_true", help="also time ganforge's step with torch.compile")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--out", default="bench/results/throughput.json")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: one configuration, in a subprocess
    args = parser.parse_args()
    if args.one:
        model, batch, precision, compiled = args.one.split(",")
        print(json.dumps(one(model, int(batch), precision, args.reps, compiled == "1", args.device)))
        return
    dev = torch.device(args.device)
    if dev.type == "cuda":
        cuda_speedups(True)  # the fp32 peak with TF32, as ganforge's fp32 step runs
    peaks = {"fp32": matmul_peak(torch.float32, dev), "bf16": matmul_peak(torch.bfloat16, dev)}
    if "fp16" in args.precisions:
        peaks["fp16"] = matmul_peak(torch.float16, dev)
    where = (torch.cuda.get_device_name(dev) if dev.type == "cuda"
             else f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, {torch.get_num_threads()} threads")  # fmt: skip
    header = (f"{date.today()}, {where}, torch {torch.__version__}; matmul peak "
              + ", ".join(f"{k} {v:.0f}" for k, v in peaks.items())
              + f" GFLOP/s ({8192 if dev.type == 'cuda' else 2048}^3{', fp32 with TF32' if dev.type == 'cuda' else ''})")  # fmt: skip
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)

    def write() -> None:  # after every row, so a run stopped part-way keeps what it measured
        Path(args.out).write_text(json.dumps({"header": header, "peaks": peaks, "rows": rows, "failed": failed},
                                             indent=1))  # fmt: skip

    rows, failed = [], []
    for model in args.models:
        for batch in args.batches:
            for precision in args.precisions:
                for compiled in (False, True) if args.compile else (False,):
                    spec = f"{model},{batch},{precision},{int(compiled)}"
                    out = subprocess.run([sys.executable, __file__, "--one", spec, "--reps", str(args.reps),
                                          "--device", args.device], capture_output=True, text=True)  # fmt: skip
                    if out.returncode != 0:  # one failing configuration does not lose the others
                        print(f"{spec}: failed\n{out.stderr[-2000:]}", file=sys.stderr, flush=True)
                        failed.append(spec)
                        continue
                    row = json.loads(out.stdout.strip().splitlines()[-1])
                    row["pct_of_matmul_peak"] = 100 * row["gflop_per_s"] / peaks[precision]
                    rows.append(row)
                    print(json.dumps({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}),
                          flush=True)  # fmt: skip
                    write()
    memory = "peak GPU memory" if dev.type == "cuda" else "peak RSS"
    lines = ["| model | batch | precision | img/s | plain eager fp32 img/s | ratio | vs ganforge fp32 | GFLOP/s "
             f"| % of matmul peak | data share | {memory} |", "|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        mode = r["precision"] + (f" + compile (first steps {r['first_iterations_s']:.0f} s)" if r["compiled"] else "")
        lines.append(f"| {r['model']} ({r['resolution']}²) | {r['batch']} | {mode} | {r['img_per_s']:.0f} "
                     f"| {r['plain_fp32_img_per_s']:.0f} | {r['ratio_vs_plain']:.2f}× "
                     + (f"| {r['ratio_vs_own_fp32']:.2f}× ({r['own_fp32_img_per_s']:.0f}) " if "ratio_vs_own_fp32" in r else "| ")
                     + f"| {r['gflop_per_s']:.0f} "
                     f"| {r['pct_of_matmul_peak']:.0f} % | {100 * r['data_share']:.1f} % "
                     f"| {r.get('peak_gpu_mb', r['peak_rss_mb']):.0f} MB |")  # fmt: skip
    print(f"\n{header}\n\n" + "\n".join(lines))
    write()
    if failed:
        sys.exit(f"{len(failed)} configuration(s) failed: {', '.join(failed)} (the others are in {args.out})")


if __name__ == "__main__":
    main()
