"""Training throughput: img/s, GFLOP/s and % of the machine's peak, peak memory, against plain PyTorch.

    python bench/throughput.py                                  # the default grid (about 10 minutes on 2 cores)
    python bench/throughput.py --models dcgan28 --batches 128 --precisions fp32 bf16
    python bench/throughput.py --device cuda --models dcgan32 resnet32 --batches 64 256 1024 --precisions fp32 bf16 fp16

For each (model, batch size, precision) a fresh subprocess times one training iteration (a D update
and a G update) of ganforge's loop (`d_step` + `g_step` reusing the fakes, non-saturating loss), in the same
process, the same nets trained the usual plain-PyTorch way in eager fp32 (pytorch/examples' DCGAN
loop: G's graph built during the D step, D run on the fakes twice, D's parameter gradients computed
during the G step). Medians of REPS repetitions; the ratio is ganforge / plain. For bf16 (not compiled),
ganforge's own fp32 step on its own copy of the nets is timed in the same alternation too: "vs ganforge
fp32" is the precision's gain measured within one run (img/s of that fp32 step in brackets; this row's
peak RSS then includes that third set of nets). FLOPs of an iteration
are counted with torch.utils.flop_counter and set against the measured peak of a 2048^3 matmul in
the same precision. Peak RSS is the subprocess's. Also: the share of a step spent fetching the batch
(index slicing of the in-memory uint8 set + conversion). Writes bench/results/throughput.json.

On CUDA (--device cuda) the timings synchronize the GPU, the matmul peak is an 8192^3 product, and peak
memory is the GPU's (torch.cuda.max_memory_allocated over the whole row). ganforge's steps run as
`ganforge train` runs them there: TF32 for fp32 matmuls and convolutions, the cuDNN autotuner, NCHW in
fp32 and channels_last in bf16/fp16 (fp16 with a GradScaler). The plain loop runs with PyTorch's
defaults (no TF32 for matmuls, cuDNN's TF32 convolutions, no autotuner), switched per call; cuDNN's cache of
chosen convolution plans is per process and not keyed by the autotuner switch, so the plain loop may run plans
that ganforge's step autotuned (docs/benchmarks.md). The fp32 peak is measured with TF32 allowed (the peak
ganforge's fp32 step can reach).
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
import time
from datetime import date
from pathlib import Path

import torch
import torch.nn.functional as F

from ganforge.data import to_float
from ganforge.losses import LOSSES
from ganforge.models import MODELS, build_models
from ganforge.precision import Precision, cuda_speedups, make_adam
from ganforge.steps import d_step, g_step

WIDTH = {"dcgan28": 64, "dcgan28-classic": 32, "dcgan32": 64, "dcgan64": 64, "resnet32": 128}


CPU = torch.device("cpu")


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


def ganforge_step(model: str, batch: int, precision: str, images: torch.Tensor):
    """One training iteration of ganforge's loop (as train.py runs it, train.reuse_fakes) on fresh nets
    (seed 0) on the device of `images`: returns (step, nets, batch_of_reals); the step runs nets["G"] and
    nets["D"], which may be swapped for compiled modules that share their parameters."""
    torch.manual_seed(0)
    dev = images.device
    amp = Precision(precision, dev)
    G, D = build_models(model, 100, images.shape[1], WIDTH[model], WIDTH[model], 0.3)
    G, D = G.to(dev, memory_format=amp.memory_format), D.to(dev, memory_format=amp.memory_format)
    opt_G, opt_D = make_adam(G, 2e-4, (0.5, 0.999), dev), make_adam(D, 2e-4, (0.5, 0.999), dev)  # as train() does
    loss = LOSSES["non-saturating"]
    gen = torch.Generator().manual_seed(0)
    state = {"i": 0}
    nets = {"G": G, "D": D}

    def batch_of_reals() -> torch.Tensor:
        state["i"] = (state["i"] + 1) % (len(images) // batch)
        idx = torch.arange(state["i"] * batch, (state["i"] + 1) * batch, device=dev)
        return to_float(images[idx]).contiguous(memory_format=amp.memory_format)

    def step() -> None:
        real = batch_of_reals()
        z = torch.randn(batch, 100, generator=gen).to(dev)  # as train.py: latents drawn on the CPU
        with amp.autocast():
            fakes = nets["G"](z)
        d_step(nets["G"], nets["D"], opt_D, loss, real, z, precision=amp, fake_img=fakes)
        g_step(nets["G"], nets["D"], opt_G, loss, z, precision=amp, fake_img=fakes)

    if dev.type == "cuda":
        return with_settings(step, lambda: cuda_speedups(True), dev), nets, batch_of_reals
    return step, nets, batch_of_reals


def one(model: str, batch: int, precision: str, reps: int, compiled: bool = False, device: str = "cpu") -> dict:
    torch.manual_seed(0)
    dev = torch.device(device)
    res = MODELS[model].resolution
    channels = 1 if res == 28 else 3
    images = torch.randint(0, 256, (max(batch * 8, 2048), channels, res, res), dtype=torch.uint8).to(dev)
    step, nets, batch_of_reals = ganforge_step(model, batch, precision, images)

    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:  # counted on the eager modules
        step()
    flops = counter.get_total_flops()
    if compiled:  # as train.compile does: the steps call compiled modules that share the parameters
        nets["G"], nets["D"] = torch.compile(nets["G"]), torch.compile(nets["D"])
    start = time.perf_counter()
    step()  # the first iterations: they include torch.compile's compile time when compiled
    step()
    sync(dev)
    first = time.perf_counter() - start
    t_data = timed(batch_of_reals, reps, 20, dev)

    # plain eager fp32, the same nets (their own copies), timed in alternation with ours
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
    if precision != "fp32" and not compiled:  # ganforge's own fp32 step too: the precision's gain, in the same run
        fns.append(ganforge_step(model, batch, "fp32", images)[0])
    times = interleaved(fns, reps, 5 if dev.type == "cpu" else 20, dev)
    t_ours, t_plain = times[:2]
    row = {
        "model": model, "resolution": res, "batch": batch, "precision": precision, "compiled": compiled,
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
