"""The learned-nothing judgement: the class prior, and a permutation test against chance that allows for the best
of several epochs; evaluate's test against always predicting the largest class."""

import math

import numpy as np
import pytest

from imgclf import baseline
from imgclf.baseline import ALPHA, chance_p_value, largest_class_test, learned_nothing, prior_loss

CLASSES = ["a", "b", "c"]


def test_prior_loss_is_the_cross_entropy_of_the_training_frequencies():
    assert prior_loss([0, 0, 0, 1], [0, 1, 1, 0], 2) == pytest.approx(-(2 * math.log(0.75) + 2 * math.log(0.25)) / 4)
    assert prior_loss([0, 0], [1], 2) == pytest.approx(-np.log(0.5 / 2.5))  # an unseen class: half an image


def test_one_class_for_every_image_and_a_loss_no_better_than_the_prior_learned_nothing():
    assert "every one of the 4 images" in learned_nothing(0.1, 1.0, [1, 1, 1, 1], [0, 1, 2, 0], CLASSES)
    assert "no better than" in learned_nothing(1.1, 1.0986, [0, 1, 2, 0], [0, 1, 2, 0], CLASSES)
    assert learned_nothing(0.5, 1.0986, [0, 0], [0, 0], CLASSES) is None  # one class present: constant is right


def test_a_few_lucky_correct_answers_are_within_chance_and_many_are_not():
    targets = np.arange(30) % 3
    lucky = targets.copy()
    lucky[:18] = (lucky[:18] + 1) % 3  # 12 of 30 right: chance gives 10
    assert "within chance" in learned_nothing(0.5, 1.0986, lucky, targets, CLASSES)
    good = targets.copy()
    good[:5] = (good[:5] + 1) % 3  # 25 of 30
    assert learned_nothing(0.5, 1.0986, good, targets, CLASSES) is None


def test_the_best_of_many_epochs_must_clear_a_stricter_bar():
    rng = np.random.default_rng(1)
    targets = np.arange(40) % 2
    predictions = np.where(rng.random(40) < 0.75, targets, 1 - targets)  # about 30 of 40 right
    p_value = chance_p_value(predictions, targets)
    assert ALPHA / 50 < p_value < ALPHA  # significant for one epoch, not for the best of 50
    assert learned_nothing(0.5, 0.69, predictions, targets, CLASSES, epochs=1) is None
    reason = learned_nothing(0.5, 0.69, predictions, targets, CLASSES, epochs=50)
    assert "allowing for the best of 50 epochs" in reason and "0.0002 needed" in reason


def test_predicting_the_largest_class_more_often_gains_nothing_from_imbalance():
    """An imbalanced set (80% class 0) and predictions that ignore the images but favour class 0: often right,
    never significant, because the shuffle keeps both the predictions' and the labels' class frequencies."""
    rng = np.random.default_rng(0)
    p_values = []
    for _ in range(200):
        targets = (rng.random(60) < 0.2).astype(int)
        predictions = (rng.random(60) < 0.1).astype(int)
        p_values.append(chance_p_value(predictions, targets))
    assert np.mean(np.array(p_values) <= 0.05) <= 0.08  # a valid test: at most its level, up to sampling noise


def test_the_permutation_test_and_its_normal_limit_agree(monkeypatch):
    rng = np.random.default_rng(3)
    targets = rng.integers(0, 4, 500)
    predictions = np.where(rng.random(500) < 0.32, targets, rng.integers(0, 4, 500))
    shuffled = chance_p_value(predictions, targets, resolution=1e-2)
    monkeypatch.setattr(baseline, "MONTE_CARLO_WORK", 0)  # force the normal approximation
    normal = chance_p_value(predictions, targets, resolution=1e-2)
    assert 1e-4 < shuffled < 0.5 and normal == pytest.approx(shuffled, rel=0.35, abs=2e-3)


def test_the_same_answer_every_run():
    targets = np.arange(50) % 5
    predictions = np.roll(targets, 3)
    assert chance_p_value(predictions, targets) == chance_p_value(predictions, targets)


def test_largest_class_test():
    targets = [0] * 20 + [1] * 19
    assert largest_class_test([0] * 39, targets)[1] > 0.4  # it is that rule
    largest, p_value = largest_class_test(targets[:30] + [0] * 9, targets)  # 30 of 39 right
    assert largest == pytest.approx(20 / 39) and p_value < 0.01
    assert largest_class_test([1, 1], [1, 1]) == (1.0, 1.0)


def test_evaluate_says_plainly_when_test_accuracy_is_within_the_largest_class_rule():
    from imgclf.evaluate import chance_note

    targets = [0] * 20 + [1] * 19
    lucky = targets[:22] + [0] * 17  # 23 of 39 right against 20 for "always 0": p about 0.2
    largest, p_value = largest_class_test(lucky, targets)
    note = chance_note({"accuracy": 23 / 39, "largest_class_accuracy": largest, "p_value_vs_largest_class": p_value},
                       39)
    assert note.startswith("note: test accuracy 0.5897 on 39 images is not distinguishable from always predicting "
                           "the largest class (0.5128; one-sided binomial p = ")
    good = largest_class_test(targets[:35] + [0] * 4, targets)
    assert chance_note({"accuracy": 35 / 39, "largest_class_accuracy": good[0], "p_value_vs_largest_class": good[1]},
                       39) == ""
