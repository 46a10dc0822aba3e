"""HYPE-infinity maths on hand-made answers: error rates, the bootstrap CI, the most fooling images."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ganforge.metrics.hype import Vote, bootstrap_ci, format_results, most_fooling, run_scores


def votes(rater: str, run: str, answers: list[tuple[str, str, str]]) -> list[Vote]:
    return [Vote(rater, run, image, truth, answer) for image, truth, answer in answers]


def test_error_rates_on_hand_made_answers():
    vs = votes("ann", "gan", [("f1", "fake", "real"), ("f2", "fake", "fake"), ("r1", "real", "real"),
                              ("r2", "real", "fake"), ("r3", "real", "real"), ("f3", "fake", "real")])  # fmt: skip
    vs += votes("ben", "gan", [("f1", "fake", "fake"), ("r1", "real", "real")])
    vs += votes("ann", "vae", [("g1", "fake", "fake"), ("s1", "real", "real")])
    s = run_scores(vs)
    gan = s["gan"]
    # wrong: ann f1, r2, f3 = 3 of 8
    assert gan["error_rate"] == pytest.approx(3 / 8)
    assert gan["false_real_rate"] == pytest.approx(2 / 4)  # fakes f1, f2, f3 (ann), f1 (ben): 2 judged real
    assert gan["false_fake_rate"] == pytest.approx(1 / 4)
    assert (gan["answers"], gan["fake_answers"], gan["real_answers"], gan["raters"]) == (8, 4, 4, 2)
    assert gan["ci95"][0] <= gan["error_rate"] <= gan["ci95"][1]
    assert "raters" in gan["ci_method"]
    # pooled over answers (ann 3 of 6 wrong weighs more than ben's 0 of 2); the raters' mean is 1/4
    assert "pooled" in gan["error_rate_pooling"] and gan["mean_rater_error_rate"] == pytest.approx((3 / 6 + 0) / 2)
    assert s["vae"]["error_rate"] == 0.0 and "answers" in s["vae"]["ci_method"]  # one rater: resample answers
    assert s["vae"]["ci95"] == [0.0, 0.0]


def test_identical_raters_give_a_zero_width_interval():
    low, high = bootstrap_ci(np.full(10, 3.0), np.full(10, 10.0))
    assert low == pytest.approx(0.3) and high == pytest.approx(0.3)


def test_bootstrap_matches_the_normal_approximation_for_many_raters():
    rng = np.random.default_rng(1)
    rates = rng.uniform(0.1, 0.5, size=400)
    counts = np.full(400, 100.0)
    errors = np.round(rates * counts)
    low, high = bootstrap_ci(errors, counts)
    p = errors / counts
    se = p.std(ddof=1) / math.sqrt(len(p))
    assert low == pytest.approx(p.mean() - 1.96 * se, abs=0.003)
    assert high == pytest.approx(p.mean() + 1.96 * se, abs=0.003)


def test_single_rater_interval_matches_the_binomial_one():
    answers = [(f"i{k}", "fake", "real" if k < 120 else "fake") for k in range(400)]  # 30 % wrong
    s = run_scores(votes("solo", "gan", answers))["gan"]
    se = math.sqrt(0.3 * 0.7 / 400)
    assert s["ci95"][0] == pytest.approx(0.3 - 1.96 * se, abs=0.006)
    assert s["ci95"][1] == pytest.approx(0.3 + 1.96 * se, abs=0.006)


def test_most_fooling_ranks_fakes_by_how_often_they_were_judged_real():
    vs = votes("a", "gan", [("x", "fake", "real"), ("y", "fake", "real"), ("z", "fake", "fake"), ("r", "real", "fake")])
    vs += votes("b", "gan", [("x", "fake", "real"), ("y", "fake", "fake"), ("z", "fake", "fake")])
    top = most_fooling(vs)
    assert [t["image"] for t in top] == ["x", "y"]  # z never fooled anyone; reals are not listed
    assert top[0]["fooled_rate"] == 1.0 and top[1]["judged_real"] == 1 and top[1]["answers"] == 2


def test_format_results_shows_every_run_and_the_protocol():
    report = {
        "study": "s1", "name": "pilot", "votes": 2, "raters_joined": 1, "metric": "HYPE-infinity",
        "runs": {"gan": run_scores(votes("a", "gan", [("x", "fake", "real"), ("r", "real", "real")]))["gan"], "vae": None},
        "protocol": {"real_per_rater": 1, "fake_per_rater": 1, "runs": {
            "gan": {"checkpoint": "final.pt", "step": 10, "real": "mnist:test"},
            "vae": {"checkpoint": "final.pt", "step": 10, "real": "mnist:test"}}},
    }  # fmt: skip
    text = format_results(report)
    assert "50.0%" in text and "no answers yet" in text and "mnist:test" in text
