"""The confusion stage's numbers against scikit-learn, computed independently."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

from interp.stages.confusion import confusion, per_class_scores


@pytest.mark.parametrize("seed", range(5))
def test_confusion_and_scores_match_scikit_learn(seed):
    rng = np.random.default_rng(seed)
    classes = int(rng.integers(2, 12))
    y_true = rng.integers(0, classes, 300)
    y_pred = np.where(rng.random(300) < 0.6, y_true, rng.integers(0, classes, 300))
    if seed == 0:  # a class never predicted and one never present: zero divisions
        y_pred[y_pred == 1] = 0
        y_true[y_true == classes - 1] = 0
    matrix = confusion(y_true, y_pred, classes)
    labels = list(range(classes))
    np.testing.assert_array_equal(matrix, confusion_matrix(y_true, y_pred, labels=labels))
    assert matrix.sum() == 300
    mine = per_class_scores(matrix)
    theirs = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    for a, b in zip(mine, theirs, strict=True):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-12)
