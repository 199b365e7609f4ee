

def test_seeds_for_reliability_is_the_smallest_count_that_reaches_the_goal():
    from pitune_core.predict.quality import seeds_for_reliability, spearman_brown

    # one target at r = 0.5: SB(0.5, n) = n / (n + 1) >= 0.8 first at n = 4
    assert seeds_for_reliability([0.5]) == 4
    assert spearman_brown(0.5, 3.0) < 0.8 <= spearman_brown(0.5, 4.0)
    # averaged over targets, and a target with no signal drags the mean down instead of being dropped
    assert seeds_for_reliability([0.5, 0.5, 0.0]) > seeds_for_reliability([0.5, 0.5])
    assert seeds_for_reliability([0.9]) == 1
    assert seeds_for_reliability([0.0], max_seeds=10) == 10  # unreachable: the cap, for the plan to report
