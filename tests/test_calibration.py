"""Temperature scaling recovers a known temperature and keeps the predictions."""

from __future__ import annotations

import torch

from ganforge.metrics.calibration import calibrated_proba, fit_temperature


def test_fit_temperature_recovers_the_scale_of_the_logits():
    gen = torch.Generator().manual_seed(0)
    true_logits = torch.randn(20000, 10, generator=gen) * 3
    labels = torch.multinomial(torch.softmax(true_logits, 1), 1, generator=gen).view(-1)  # calibrated truth
    for scale in (0.4, 1.0, 2.5):  # an under-confident, a calibrated, an over-confident classifier
        t = fit_temperature(true_logits * scale, labels)
        assert abs(t - scale) < 0.05 * scale, (scale, t)
    p = calibrated_proba(true_logits * 0.4, fit_temperature(true_logits * 0.4, labels))
    assert torch.equal(p.argmax(1), true_logits.argmax(1))  # the predictions do not change
    assert abs(float(p.max(1).values.mean()) - float(torch.softmax(true_logits, 1).max(1).values.mean())) < 0.01
