"""Bit-identity of CPU training across a code change: the same short runs on two commits must give
equal tensors in every checkpoint and equal metrics.jsonl records (wall-time fields dropped).

    python bench/bit_identity.py --against HEAD~3            # runs the matrix on HEAD~3 and here, compares
    python bench/bit_identity.py --out DIR                   # only runs the matrix here, into DIR
    python bench/bit_identity.py --compare DIR_A DIR_B       # only compares two earlier outputs
    python bench/bit_identity.py --cases defaults vae        # a part of the matrix

`--against REV` checks REV out into a temporary git worktree and runs the matrix with its `src/` first
on PYTHONPATH, so both sides run in this interpreter with the same torch. Every case is a short
`ganforge train` on the embedded mnist-5k (or a 2D mixture), fp32 on the CPU, one thread per process,
so nothing depends on the machine's load. tests/test_bit_identity.py runs a small part of it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]

# every case: `ganforge train` arguments beyond the common ones below
COMMON = ["--data", "mnist-5k", "--no-progress", "--set", "data.limit=256", "data.download=false",
          "model.g_channels=8", "model.d_channels=8", "model.z_dim=16", "train.batch_size=16",
          "train.steps=24", "train.log_every=4", "train.checkpoint_every=8", "train.sample_every=12",
          "train.n_samples=8", "train.device=cpu", "train.precision=fp32", "train.ema_beta=0.9",
          "monitor.every=8", "monitor.n=64", "monitor.warmup=0"]  # fmt: skip
CASES: dict[str, list[str]] = {
    "defaults": [],
    "n_critic2-fresh-fakes": ["train.n_critic=2", "train.reuse_fakes=false"],
    "relativistic-r1-r2": ["loss.name=relativistic", "reg.r1_gamma=1", "reg.r2_gamma=1", "reg.r1_interval=4"],
    "wgan-gp": ["loss.name=wgan", "reg.gp_weight=10", "train.n_critic=2"],
    "diffaugment": ["reg.diffaugment=color,translation,cutout"],
    "conditional-mode-seeking": ["model.conditional=true", "reg.mode_seeking=1"],
    "topk": ["reg.topk=0.5", "reg.topk_gamma=0.5"],
    "simultaneous": ["train.update=simultaneous"],
    "simultaneous-hinge-r1": ["train.update=simultaneous", "loss.name=hinge", "reg.r1_gamma=1", "reg.r1_interval=2"],
    "pack-mbstd-sn-lrdecay": ["model.pack=2", "model.mbstd=true", "model.spectral_norm=true", "optim.lr_decay=linear"],
    "latent-codes": ["model.latent_codes=4", "reg.mode_seeking=0.5"],
    "vae": ["model.name=vae28", "loss.name=elbo"],
    "clusters": ["model.clusters=4"],
    "rollback": ["monitor.on_collapse=rollback", "monitor.diversity_threshold=0.99", "monitor.patience=1",
                 "monitor.max_rollbacks=2"],  # fmt: skip
    "two-processes": ["--nproc", "2"],
    "resume": [],  # 12 steps, then `--resume --steps 24` (see run_case)
}
# after COMMON, a case's own "--set" values continue the list; "--nproc 2" goes before "--set"
WALL_KEYS = {"time", "img_per_s", "seconds", "train_seconds"}


def run_case(name: str, out: Path, pythonpath: str | None) -> None:
    args = CASES[name]
    flags = [a for a in args if a.startswith("--") or a.isdigit()]
    sets = [a for a in args if a not in flags]
    train = [sys.executable, "-m", "ganforge", "train"]
    cmds = [[*train, *flags, "--runs-dir", str(out), "--name", name, *COMMON, *sets]]
    if name == "resume":  # a run stopped at step 12 and resumed to 24 must be the run of 24 steps
        cmds = [[*cmds[0], "train.steps=12"], [*train, "--resume", str(out / name), "--steps", "24", "--no-progress"]]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if pythonpath:
        env["PYTHONPATH"] = pythonpath + os.pathsep + env.get("PYTHONPATH", "")
    stderr = ""
    for cmd in cmds:
        result = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if result.returncode not in (0, 3):  # 3: a run the monitor stopped is still a result to compare
            sys.exit(f"case {name} failed ({result.returncode}):\n{result.stderr[-3000:]}")
        stderr += f"$ exit {result.returncode}\n" + result.stdout + result.stderr
    # what the user sees, with the run folder's parent and the timings taken out
    stderr = re.sub(r"\d+(\.\d+)? s\b", "T s", stderr.replace(str(out), "RUNS"))
    (out / name / "output.txt").write_text(stderr)


def run_matrix(out: Path, cases: list[str], pythonpath: str | None = None) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name in cases:
        print(f"  {name} ...", flush=True)
        run_case(name, out, pythonpath)


def _tensors(obj: object, prefix: str = "") -> dict[str, object]:
    """Every leaf of a checkpoint, by its path of keys."""
    if isinstance(obj, dict):
        out: dict[str, object] = {}
        for k, v in obj.items():
            out.update(_tensors(v, f"{prefix}/{k}"))
        return out
    if isinstance(obj, (list, tuple)):
        out = {}
        for i, v in enumerate(obj):
            out.update(_tensors(v, f"{prefix}/{i}"))
        return out
    return {prefix: obj}


def _log(path: Path) -> list[dict]:
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [{k: v for k, v in r.items() if k not in WALL_KEYS} for r in records]


def compare_case(a: Path, b: Path, new_keys: tuple[str, ...] = ()) -> list[str]:
    """What differs between two runs of one case (empty: bit-identical). `new_keys`: checkpoint keys that
    the second side may add (a change that adds to the format on purpose): top-level names, or paths such
    as config/loss/l1_weight (a new config field)."""
    problems = []
    ckpts_a = sorted(p.name for p in (a / "checkpoints").glob("*.pt"))
    ckpts_b = sorted(p.name for p in (b / "checkpoints").glob("*.pt"))
    if ckpts_a != ckpts_b:
        problems.append(f"checkpoints differ: {ckpts_a} vs {ckpts_b}")
    for name in sorted(set(ckpts_a) & set(ckpts_b)):
        ta = _tensors(torch.load(a / "checkpoints" / name, weights_only=True))
        tb = _tensors(torch.load(b / "checkpoints" / name, weights_only=True))
        added = {k for k in set(tb) - set(ta)
                 if any(k.split("/")[1] == nk or k == f"/{nk}" or k.startswith(f"/{nk}/") for nk in new_keys)}  # fmt: skip
        tb = {k: v for k, v in tb.items() if k not in added}
        if set(ta) != set(tb):
            problems.append(f"{name}: keys differ: {sorted(set(ta) ^ set(tb))[:5]}")
        for key in sorted(set(ta) & set(tb)):
            if key.endswith(("/train_seconds", "/log_bytes", "/payload_sha256")) or key.startswith("/config/run/"):
                continue  # wall time; the log's size follows its time fields, the file's hash both; the run folder
            va, vb = ta[key], tb[key]
            if isinstance(va, torch.Tensor) or isinstance(vb, torch.Tensor):
                same = (isinstance(va, torch.Tensor) and isinstance(vb, torch.Tensor)
                        and va.dtype == vb.dtype and va.shape == vb.shape and torch.equal(va, vb))  # fmt: skip
            else:
                same = va == vb or (va != va and vb != vb)  # NaN == NaN here
            if not same:
                problems.append(f"{name}: {key} differs")
    if _log(a / "metrics.jsonl") != _log(b / "metrics.jsonl"):
        problems.append("metrics.jsonl differs (wall-time fields dropped)")
    if (a / "output.txt").read_text() != (b / "output.txt").read_text():
        problems.append("the printed output and exit codes differ (timings and the runs folder taken out)")
    return problems


def compare(dir_a: Path, dir_b: Path, cases: list[str], new_keys: tuple[str, ...] = ()) -> bool:
    ok = True
    for name in cases:
        problems = compare_case(dir_a / name, dir_b / name, new_keys)
        n_ckpt = len(list((dir_a / name / "checkpoints").glob("*.pt")))
        n_log = len(_log(dir_a / name / "metrics.jsonl"))
        status = "identical" if not problems else "DIFFERENT"
        print(f"{name:28s} {status}  ({n_ckpt} checkpoints, {n_log} log records)")
        for p in problems[:10]:
            print(f"    {p}")
        ok = ok and not problems
    return ok


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--against", metavar="REV", help="git revision to compare this checkout with")
    p.add_argument("--out", metavar="DIR", help="run the matrix here into DIR (no comparison)")
    p.add_argument("--compare", nargs=2, metavar="DIR", help="compare two earlier outputs")
    p.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES))
    p.add_argument("--new-keys", nargs="+", default=[], metavar="KEY",
                   help="checkpoint keys this checkout adds on purpose (e.g. monitor_streak)")
    args = p.parse_args()
    if args.compare:
        sys.exit(0 if compare(Path(args.compare[0]), Path(args.compare[1]), args.cases, tuple(args.new_keys)) else 1)
    if args.out:
        run_matrix(Path(args.out), args.cases)
        return
    if not args.against:
        p.error("give --against REV, --out DIR or --compare A B")
    with tempfile.TemporaryDirectory(prefix="bit-identity-") as tmp:
        tmp = Path(tmp)
        rev = subprocess.run(["git", "rev-parse", "--short", args.against], cwd=ROOT, check=True,
                             capture_output=True, text=True).stdout.strip()  # fmt: skip
        subprocess.run(["git", "worktree", "add", "--detach", str(tmp / "tree"), rev], cwd=ROOT, check=True,
                       capture_output=True)  # fmt: skip
        try:
            print(f"{rev} (the other side):")
            run_matrix(tmp / "before", args.cases, pythonpath=str(tmp / "tree" / "src"))
            print("this checkout:")
            run_matrix(tmp / "after", args.cases)
            here = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT, capture_output=True,
                                  text=True).stdout.strip()  # fmt: skip
            print(f"\n{rev} vs {here}, torch {torch.__version__}:")
            ok = compare(tmp / "before", tmp / "after", args.cases, tuple(args.new_keys))
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(tmp / "tree")], cwd=ROOT)
    print("all identical" if ok else "SOME CASES DIFFER")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
