import numpy as np
import pytest

from nudiff.diffusion.count_matching import count_targets, match_counts


def test_targets_are_evenly_spaced_quantiles_of_the_reference():
    assert count_targets([1, 2, 3, 4], 4).tolist() == pytest.approx([1.375, 2.125, 2.875, 3.625])
    assert count_targets([5], 3).tolist() == [5, 5, 5]
    with pytest.raises(ValueError, match="no reference"):
        count_targets([], 2)


def test_the_kept_candidates_follow_the_reference_counts():
    # a crowded candidate set; the reference is sparse: the sparse candidates are kept
    candidates = [12, 3, 15, 4, 11, 5, 14, 2]
    kept = match_counts(candidates, [2, 3, 4, 5], 4)
    assert kept.tolist() == [1, 3, 5, 7]
    assert sorted(np.asarray(candidates)[kept]) == [2, 3, 4, 5]


def test_every_candidate_is_kept_when_as_many_are_wanted_and_ties_go_to_the_first():
    assert match_counts([9, 1, 5], [3], 3).tolist() == [0, 1, 2]
    assert match_counts([4, 4, 4], [4], 1).tolist() == [0]
    with pytest.raises(ValueError, match="cannot keep 3 of 2"):
        match_counts([1, 2], [1], 3)


def test_the_choice_moves_the_mean_count_towards_the_reference():
    rng = np.random.default_rng(0)
    reference = rng.poisson(6, size=200)
    candidates = rng.poisson(11, size=64)
    kept = match_counts(candidates, reference, 32)
    assert len(set(kept.tolist())) == 32
    # mean counts: reference 6.2, candidates 11.5, kept 9.1 (as low as the candidates allow)
    assert candidates[kept].mean() < candidates.mean() - 2
