"""Human real-or-fake error rates: HYPE-infinity (Zhou et al., NeurIPS 2019, sec. 3.2).

Raters judge a balanced, shuffled mix of real and generated images with unlimited time. The score is
the raters' error rate on that mix: 50 % means they cannot tell the generator's images from real
ones, 0 % that they always can. Pure functions on plain vote records; the web app stores the votes.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

BOOTSTRAP_SAMPLES = 2000


@dataclass(frozen=True)
class Vote:
    rater: str
    run: str  # the run whose real/fake mix the image belongs to
    image: str
    truth: str  # "real" or "fake"
    answer: str  # "real" or "fake"


def bootstrap_ci(
    errors: np.ndarray, counts: np.ndarray, level: float = 0.95, samples: int = BOOTSTRAP_SAMPLES, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap interval of the pooled error rate sum(errors) / sum(counts).

    Each entry is one resampling unit (a rater: `errors` wrong answers out of `counts`). Units are
    drawn with replacement, so the answers of one rater, which are correlated, move together.
    """
    errors, counts = np.asarray(errors, dtype=np.float64), np.asarray(counts, dtype=np.float64)
    if len(errors) == 0 or counts.sum() == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(errors), size=(samples, len(errors)))
    rates = errors[idx].sum(axis=1) / np.maximum(counts[idx].sum(axis=1), 1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(rates, [tail, 100 - tail])
    return float(low), float(high)


def run_scores(votes: Iterable[Vote], seed: int = 0) -> dict[str, dict[str, Any]]:
    """Per run: HYPE-infinity error rate with its 95 % bootstrap CI, false-real and false-fake rates.

    - error rate: wrong answers / answers, over the run's real and fake images together, pooled over
      answers: a rater who answered more weighs more. HYPE's protocol gives every rater the same number
      of images, where the pooled rate equals the mean of the raters' rates (mean_rater_error_rate,
      reported too, for studies where raters stopped early)
    - false-real rate: fakes judged real / fakes judged (how often the generator fooled people)
    - false-fake rate: reals judged fake / reals judged
    The CI resamples raters (or, with a single rater, that rater's individual answers).
    """
    by_run: dict[str, list[Vote]] = {}
    for v in votes:
        by_run.setdefault(v.run, []).append(v)
    out = {}
    for run, vs in by_run.items():
        wrong = np.array([v.answer != v.truth for v in vs])
        fake = np.array([v.truth == "fake" for v in vs])
        raters = sorted({v.rater for v in vs})
        index = {r: i for i, r in enumerate(raters)}
        who = np.array([index[v.rater] for v in vs])
        if len(raters) >= 2:
            unit = "raters"
            errors = np.bincount(who, weights=wrong, minlength=len(raters))
            counts = np.bincount(who, minlength=len(raters))
        else:
            unit = "answers"
            errors, counts = wrong.astype(np.float64), np.ones(len(vs))
        low, high = bootstrap_ci(errors, counts, seed=seed)
        per_rater = np.bincount(who, weights=wrong, minlength=len(raters)) / np.bincount(who, minlength=len(raters))
        out[run] = {
            "error_rate": float(wrong.mean()),
            "error_rate_pooling": "wrong answers / answers, pooled over raters",
            "mean_rater_error_rate": float(per_rater.mean()),
            "ci95": [low, high],
            "ci_method": f"percentile bootstrap over {unit}, {BOOTSTRAP_SAMPLES} resamples",
            # None (JSON null) until the run has answers on images of that kind
            "false_real_rate": float(wrong[fake].mean()) if fake.any() else None,
            "false_fake_rate": float(wrong[~fake].mean()) if (~fake).any() else None,
            "answers": len(vs),
            "fake_answers": int(fake.sum()),
            "real_answers": int((~fake).sum()),
            "raters": len(raters),
        }
    return out


def most_fooling(votes: Iterable[Vote], k: int = 8) -> list[dict[str, Any]]:
    """The generated images most often judged real: fraction judged real, then number of answers."""
    tally: dict[tuple[str, str], list[int]] = {}
    for v in votes:
        if v.truth == "fake":
            t = tally.setdefault((v.run, v.image), [0, 0])
            t[0] += v.answer == "real"
            t[1] += 1
    ranked = sorted(tally.items(), key=lambda kv: (-kv[1][0] / kv[1][1], -kv[1][1], kv[0]))
    return [
        {"run": run, "image": image, "judged_real": fooled, "answers": n, "fooled_rate": fooled / n}
        for (run, image), (fooled, n) in ranked[:k]
        if fooled > 0
    ]


def format_results(report: dict[str, Any]) -> str:
    """A study report (from the serve store) as a plain-text table with its protocol."""

    def pct(x: Optional[float]) -> str:
        return "-" if x is None or x != x else f"{100 * x:.1f}%"

    lines = [f"study {report['study']} '{report['name']}': {report['votes']} answers, {report['raters_joined']} raters",
             report["metric"], "",
             f"{'run':<32} {'error rate':>10} {'95% CI':>15} {'fake->real':>10} {'real->fake':>10} {'answers':>8} {'raters':>6}"]  # fmt: skip
    method = None
    for run, s in report["runs"].items():
        if s is None:
            lines.append(f"{run:<32} {'no answers yet':>10}")
            continue
        ci = f"{pct(s['ci95'][0])}-{pct(s['ci95'][1])}"
        lines.append(f"{run:<32} {pct(s['error_rate']):>10} {ci:>15} {pct(s['false_real_rate']):>10} "
                     f"{pct(s['false_fake_rate']):>10} {s['answers']:>8} {s['raters']:>6}")  # fmt: skip
        method = s["ci_method"]
    p = report["protocol"]
    lines += ["", f"protocol: {p['real_per_rater']} real + {p['fake_per_rater']} generated images per rater and run; "
              f"CI: {method or '-'}"]  # fmt: skip
    for run, rp in p["runs"].items():
        lines.append(f"  {run}: {rp['checkpoint']} (step {rp['step']}), real images from {rp['real']}, "
                     f"truncation {rp.get('truncation') or 'off'}")  # fmt: skip
    return "\n".join(lines)
