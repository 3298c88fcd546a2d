import numpy as np
import pytest

from polypseg.metrics import Scores, mean_scores, score_masks


def test_known_overlap():
    truth = np.zeros((10, 10), bool)
    truth[:, :4] = True  # 40 pixels
    prediction = np.zeros((10, 10), bool)
    prediction[:, 2:6] = True  # 40 pixels, 20 shared
    scores = score_masks(prediction, truth)
    assert scores.iou == pytest.approx(20 / 60)
    assert scores.dice == pytest.approx(40 / 80)
    assert scores.precision == pytest.approx(0.5) and scores.recall == pytest.approx(0.5)


def test_empty_conventions():
    empty, full = np.zeros((4, 4), bool), np.ones((4, 4), bool)
    assert score_masks(empty, empty) == Scores(1, 1, 1, 1)
    assert score_masks(empty, full) == Scores(0, 0, 0, 0)
    assert score_masks(full, empty) == Scores(0, 0, 0, 0)


def test_mean_and_size_mismatch():
    assert mean_scores([Scores(1, 1, 1, 1), Scores(0, 0.5, 0, 0)]) == Scores(0.5, 0.75, 0.5, 0.5)
    with pytest.raises(ValueError, match="differ in size"):
        score_masks(np.zeros((2, 2), bool), np.zeros((3, 2), bool))
