"""The standard error the demo and ablate reports put next to a gain: paired over problems."""

import math

from services.evaluation import Accuracy, paired_gain


def test_paired_gain_is_the_mean_difference_with_its_standard_error():
    old = Accuracy(0.25, 0.25, 0.5, 0.25, 4, 4, greedy_each=(0, 1, 0, 0), pass1_each=(0, 0.5, 0.25, 0.25))
    new = Accuracy(0.75, 0.5, 0.75, 0.5, 4, 4, greedy_each=(1, 1, 0, 1), pass1_each=(0.5, 0.5, 0.5, 0.5))
    gain, se = paired_gain(new, old, "greedy")
    # differences 1, 0, 0, 1: mean 0.5, sample variance 1/3, standard error sqrt(1/3 / 4)
    assert math.isclose(gain, 50.0) and math.isclose(se, 100 * math.sqrt(1 / 12))
    gain, se = paired_gain(new, old, "pass1")
    # differences 0.5, 0, 0.25, 0.25: mean 0.25, sample variance 1/24
    assert math.isclose(gain, 25.0) and math.isclose(se, 100 * math.sqrt(1 / 24 / 4))
    # a model that differs on no problem has no spread
    assert paired_gain(old, old, "greedy") == (0.0, 0.0)


def test_without_per_problem_results_there_is_no_standard_error():
    summary_only = Accuracy(0.5, 0.5, 0.5, 0.5, 4, 4)
    gain, se = paired_gain(summary_only, Accuracy(0.25, 0.25, 0.5, 0.25, 4, 4), "greedy")
    assert math.isclose(gain, 25.0) and se is None
    other_problems = Accuracy(0.5, 0.5, 0.5, 0.5, 4, 2, greedy_each=(1, 0), pass1_each=(0.5, 0.5))
    assert paired_gain(other_problems, Accuracy(0.5, 0.5, 0.5, 0.5, 4, 3, greedy_each=(1, 0, 0),
                                                pass1_each=(0.5, 0.5, 0.5)), "greedy")[1] is None
