"""Python's garbage-collector pauses during a `ganforge train` run: does the cyclic GC still pause a rank of a
data-parallel run at a moment of its own (the jitter that bench/rank_waits.py times)? The training loop switches the
automatic collector off and collects every 200 steps itself (`LoopGarbageCollector` in train.py); this checks that.

    GANFORGE_DATA=../shared/data OMP_NUM_THREADS=1 python bench/gc_pauses.py --warmup 10 -- \\
        train --model dcgan28-classic --data mnist --steps 600 --batch-size 64 --no-progress \\
        --set monitor.every=null train.sample_every=100000 train.checkpoint_every=100000 train.device=cpu

Runs the `ganforge` command after `--` in this process with a `gc.callbacks` hook and prints, per
generation, how many collections there were and how long they took: over the whole process, and after
the first WARMUP seconds (imports and start-up are over by then); and split by whether the automatic collector
was on at the time: off means inside the training loop (its own collections), on means outside it. One JSON line;
exits with the command's status.
"""

from __future__ import annotations

import argparse
import gc
import json
import time

from ganforge.cli import main as ganforge_main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--warmup", type=float, default=10.0, help="seconds of start-up left out of the second count")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the ganforge command, after --")
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command

    t0 = time.perf_counter()
    started: dict[int, float] = {}
    pauses: list[tuple[float, int, float, bool]] = []  # (seconds since start, generation, ms, automatic GC on)

    def hook(phase: str, info: dict) -> None:
        now = time.perf_counter()
        if phase == "start":
            started[info["generation"]] = now
        else:
            g = info["generation"]
            pauses.append((now - t0, g, 1000 * (now - started[g]), gc.isenabled()))

    gc.callbacks.append(hook)
    try:
        rc = ganforge_main(command)
    except SystemExit as e:
        rc = e.code if isinstance(e.code, int) else 1
    finally:
        gc.callbacks.remove(hook)
    wall = time.perf_counter() - t0

    def summary(rows: list[tuple[float, int, float, bool]]) -> dict:
        out = {}
        for g in (0, 1, 2):
            ms = [p for _, gen, p, _ in rows if gen == g]
            out[f"gen{g}"] = {"collections": len(ms), "total_ms": round(sum(ms), 1),
                              "max_ms": round(max(ms), 2) if ms else 0.0}  # fmt: skip
        return out

    late = [r for r in pauses if r[0] >= args.warmup]
    late_ms = sum(p for _, _, p, _ in late)
    print(json.dumps({"command": command, "exit_status": rc, "wall_s": round(wall, 1), "all": summary(pauses),
                      f"after_{args.warmup:g}s": summary(late),
                      "share_after_warmup": round(late_ms / 1000 / max(wall - args.warmup, 1e-9), 5),
                      "in_the_loop": summary([r for r in pauses if not r[3]]),
                      "outside_the_loop": summary([r for r in pauses if r[3]])}))  # fmt: skip
    if rc:
        raise SystemExit(rc)


if __name__ == "__main__":
    main()
