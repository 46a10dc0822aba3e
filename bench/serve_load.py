"""Load test of `ganforge serve`'s study API: N concurrent simulated raters, each casting all its votes,
against a real uvicorn server on loopback. Checks every vote is stored exactly once; reports votes/s.

    python bench/serve_load.py --raters 50 --votes 100 [--run RUN_DIR]

The server runs as `ganforge serve` in its own process (one uvicorn worker, SQLite WAL); the raters
are threads of this process. Without --run it trains a tiny run on mnist-5k first (a few seconds).
tests/test_serve.py runs the same `run_load`, 50 x 100, against an in-process server.
"""

from __future__ import annotations

import argparse
import json
import platform
import secrets
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any


def run_load(base: str, study: str, raters: int) -> dict[str, Any]:
    """`raters` threads join `study` and answer every image they are given; returns what happened."""
    import httpx

    errors: list[str] = []
    answered: list[int] = []
    latencies: list[float] = []
    lock = threading.Lock()

    def rater(i: int) -> None:
        mine = []
        try:
            with httpx.Client(base_url=base, timeout=60) as h:
                state = h.post(f"/api/studies/{study}/raters", json={"name": f"rater-{i}"}).json()
                while state["next"]:
                    t0 = time.perf_counter()
                    r = h.post(f"/api/raters/{state['rater']}/votes", json={"image": state["next"], "answer": "real"})
                    mine.append(time.perf_counter() - t0)
                    if r.status_code != 200:
                        raise RuntimeError(f"{r.status_code}: {r.text[:200]}")
                    state = r.json()
            with lock:
                answered.append(state["answered"])
        except Exception as e:  # noqa: BLE001 - every failure is reported
            with lock:
                errors.append(repr(e))
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=rater, args=(i,)) for i in range(raters)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - start
    lat = sorted(latencies)
    return {
        "raters": raters, "errors": errors, "answered": answered, "seconds": seconds,
        "votes_per_s": len(latencies) / seconds if seconds else 0.0,
        "latency_ms_median": 1000 * statistics.median(lat) if lat else None,
        "latency_ms_p99": 1000 * lat[int(0.99 * (len(lat) - 1))] if lat else None,
    }  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--raters", type=int, default=50)
    parser.add_argument("--votes", type=int, default=100, help="votes per rater (half real, half generated)")
    parser.add_argument("--run", help="a run folder to serve (default: train a tiny one)")
    parser.add_argument("--out", default="bench/results/serve_load.json")
    args = parser.parse_args()

    from ganforge import __version__, train
    from ganforge.config import build_config

    work = Path(tempfile.mkdtemp(prefix="serve-load-"))
    run = args.run
    if run is None:
        cfg = build_config(overrides={
            "data": {"name": "mnist-5k", "download": False}, "model": {"g_channels": 8, "d_channels": 8},
            "train": {"steps": 20, "batch_size": 16, "device": "cpu"},
            "run": {"runs_dir": str(work / "runs"), "name": "load"},
        })  # fmt: skip
        run = train(cfg, progress=False)
    db = work / "load.db"
    # the server in its own process, as `ganforge serve` runs it: the simulated raters here do not
    # share its interpreter lock
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    base = f"http://127.0.0.1:{port}"
    key = secrets.token_urlsafe(24)  # study creation needs serve's admin key
    server = subprocess.Popen([sys.executable, "-m", "ganforge", "serve", str(run), "--port", str(port), "--db", str(db),
                               "--admin-key", key], stdout=subprocess.DEVNULL)  # fmt: skip
    try:
        import httpx

        deadline = time.monotonic() + 120
        while True:
            try:
                httpx.get(f"{base}/api/runs", timeout=2).raise_for_status()
                break
            except httpx.HTTPError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("bench: the server did not start") from None
                time.sleep(0.2)
        half = args.votes // 2
        made = httpx.post(f"{base}/api/studies", json={"name": "load", "runs": ["0"], "real_per_rater": args.votes - half,
                                                       "fake_per_rater": half}, headers={"X-Admin-Key": key}, timeout=120)  # fmt: skip
        made.raise_for_status()
        result = run_load(base, made.json()["id"], args.raters)
    finally:
        server.terminate()
        server.wait(timeout=30)
    stored, distinct = sqlite3.connect(db).execute(
        "SELECT COUNT(*), COUNT(DISTINCT rater_id || image_id) FROM votes"
    ).fetchone()
    result.update(stored=stored, distinct=distinct, expected=args.raters * args.votes, ganforge=__version__,
                  machine=f"{platform.processor() or platform.machine()}, {__import__('os').cpu_count()} cores",
                  date=time.strftime("%Y-%m-%d"), server="ganforge serve: uvicorn, one process, SQLite WAL; raters: threads of a second process")  # fmt: skip
    errors = result.pop("errors")
    result["error_count"] = len(errors)
    result["answered"] = sorted(set(result["answered"]))
    print(json.dumps(result, indent=2))
    for e in errors[:5]:
        print("error:", e, file=sys.stderr)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    ok = not errors and stored == distinct == result["expected"]
    print("OK: every vote stored exactly once" if ok else "FAILED", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
