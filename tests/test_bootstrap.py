"""The bootstrap interval (mamllib.evaluate.bootstrap_ci) against cases with a known
answer: the exact bootstrap distribution of a 0/1 sample's mean (a binomial), and of
the median of three values; normal theory for the mean of a large sample."""

import math

import pytest
import torch

from mamllib.evaluate import bootstrap_ci, mean_ci


def binomial_quantile(n: int, p: float, q: float) -> int:
    """The smallest k with P(Binomial(n, p) <= k) >= q, and that CDF's distance from q
    at k and k - 1 (how far the answer is from a tie)."""
    cdf = 0.0
    for k in range(n + 1):
        previous = cdf
        cdf += math.comb(n, k) * p**k * (1 - p) ** (n - k)
        if cdf >= q:
            return k, min(cdf - q, q - previous)
    return n, 0.0


def test_mean_of_a_zero_one_sample_follows_the_binomial():
    # Resampling n values of which m are 1 gives a mean of Binomial(n, m/n) / n:
    # the interval's ends are that distribution's 2.5% and 97.5% quantiles.
    n, m = 30, 4
    values = torch.tensor([1.0] * m + [0.0] * (n - m))
    got = bootstrap_ci(values, "mean", n_resamples=200_000, seed=1)
    for end, q in (("low", 0.025), ("high", 0.975)):
        k, margin = binomial_quantile(n, m / n, q)
        # The quantile is clear of a tie by far more than 200,000 resamples blur it
        # (their empirical CDF is within about 0.001 of the true one).
        assert margin > 0.005, (end, k, margin)
        assert got[end] == pytest.approx(k / n), (end, got[end], k / n)
    assert got["estimate"] == pytest.approx(m / n)


def test_median_of_three_values():
    # A resample's median is the smallest value with probability 7/27 (at least two
    # of three draws are it), the largest also 7/27, the middle one 13/27: both tails
    # of 2.5% lie on the extremes.
    got = bootstrap_ci(torch.tensor([3.0, -1.0, 10.0]), "median", n_resamples=20_000)
    assert (got["low"], got["estimate"], got["high"]) == (-1.0, 3.0, 10.0)


def test_mean_of_a_large_normal_sample_agrees_with_normal_theory():
    values = torch.randn(2_000, generator=torch.Generator().manual_seed(0)) + 5
    boot = bootstrap_ci(values, "mean", n_resamples=20_000)
    normal = mean_ci(values)
    assert boot["estimate"] == pytest.approx(normal["mean"])
    for end, sign in (("low", -1), ("high", 1)):
        assert boot[end] == pytest.approx(
            normal["mean"] + sign * normal["ci95"], abs=0.1 * normal["ci95"]
        )


def test_one_infinite_value_bounds_the_mean_not_the_median():
    # One diverged task in 600: about 37% of resamples miss it ((1 - 1/600)^600),
    # so the mean's interval runs from finite to infinite; the median barely moves.
    values = torch.linspace(0.1, 1.0, 600)
    values[17] = math.inf
    mean = bootstrap_ci(values, "mean")
    median = bootstrap_ci(values, "median")
    assert mean["estimate"] == math.inf and mean["high"] == math.inf
    assert math.isfinite(mean["low"])
    assert 0.5 < median["low"] <= median["estimate"] <= median["high"] < 0.65


def test_reproducible_and_checked():
    values = torch.rand(50, generator=torch.Generator().manual_seed(3))
    assert bootstrap_ci(values, seed=4) == bootstrap_ci(values, seed=4)
    with pytest.raises(ValueError, match="statistic"):
        bootstrap_ci(values, "mode")
    with pytest.raises(ValueError, match="NaN"):
        bootstrap_ci(torch.tensor([1.0, math.nan]))
    with pytest.raises(ValueError, match="at least 2"):
        bootstrap_ci(torch.tensor([1.0]))


@pytest.mark.parametrize("n", [7, 8])
def test_the_estimates_are_the_sample_mean_and_median(n):
    values = torch.rand(
        n, generator=torch.Generator().manual_seed(n), dtype=torch.float64
    )
    assert bootstrap_ci(values, "mean")["estimate"] == pytest.approx(
        values.mean().item()
    )
    assert bootstrap_ci(values, "median")["estimate"] == pytest.approx(
        torch.quantile(values, 0.5).item()
    )
