"""Verbalized-confidence calibration, for evaluating abstention: pure functions on lists of numbers.

    ECE   = sum_b (|B_b| / N) |acc(B_b) - conf(B_b)|   over `bins` equal-width confidence bins ([0, 1/bins), ...,
            [1 - 1/bins, 1]); empty bins contribute nothing
    Brier = mean_i (conf_i - correct_i)^2
    AUROC = P(conf of a random correct answer > conf of a random wrong one), ties count 1/2 (scikit-learn);
            None when all answers are correct or all are wrong
Samples without a stated confidence are left out of these three (their share is reported as `confidence_missing`);
the "I don't know" rate counts every sample.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def expected_calibration_error(confidence: Sequence[float], correct: Sequence[bool], bins: int = 10) -> float:
    conf, acc = np.asarray(confidence, dtype=float), np.asarray(correct, dtype=float)
    if len(conf) == 0:
        return 0.0
    which = np.minimum((conf * bins).astype(int), bins - 1)  # conf = 1.0 falls in the last bin
    return float(sum(abs(acc[which == b].mean() - conf[which == b].mean()) * (which == b).mean()
                     for b in range(bins) if (which == b).any()))


def brier_score(confidence: Sequence[float], correct: Sequence[bool]) -> float:
    conf, acc = np.asarray(confidence, dtype=float), np.asarray(correct, dtype=float)
    return float(((conf - acc) ** 2).mean()) if len(conf) else 0.0


def auroc(confidence: Sequence[float], correct: Sequence[bool]) -> float | None:
    from sklearn.metrics import roc_auc_score

    acc = np.asarray(correct, dtype=bool)
    if len(acc) == 0 or acc.all() or not acc.any():
        return None
    return float(roc_auc_score(acc, np.asarray(confidence, dtype=float)))


def calibration_metrics(confidence: Sequence[float | None], correct: Sequence[bool], refused: Sequence[bool],
                        bins: int = 10) -> dict[str, float | None]:
    """ECE, Brier and AUROC over the samples that state a confidence; the "I don't know" rate over all."""
    stated = [(c, ok) for c, ok in zip(confidence, correct) if c is not None]
    conf, acc = [c for c, _ in stated], [ok for _, ok in stated]
    n = max(1, len(correct))
    return {"ece": expected_calibration_error(conf, acc, bins), "brier": brier_score(conf, acc),
            "auroc": auroc(conf, acc), "idk_rate": sum(map(bool, refused)) / n,
            "confidence_missing": 1.0 - len(stated) / n}
