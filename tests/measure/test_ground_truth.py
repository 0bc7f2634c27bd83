import math

import pytest
import torch

from memcallback.measure.ground_truth import (
    COPY_RATE_CONFIDENCE,
    MemorizationLabels,
    binomial_tail,
    copy_rate_lower_bound,
    copy_rate_power,
    memorization_labels,
    nearest_neighbours,
)


def _reference(n: int = 50, shape: tuple[int, ...] = (1, 8, 8), seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(n, *shape, generator=generator) * 2 - 1


def _brute_force(samples: torch.Tensor, reference: torch.Tensor, k: int):
    d = torch.cdist(
        samples.flatten(1).double(), reference.flatten(1).double(), compute_mode="donot_use_mm_for_euclid_dist"
    )
    return d.topk(k, dim=1, largest=False)


def test_exact_copies_have_distance_zero_and_ratio_zero():
    reference = _reference()
    labels = memorization_labels(reference[[3, 7, 7, 41]], reference)
    assert isinstance(labels, MemorizationLabels)
    assert labels.nearest_distance.tolist() == [0.0, 0.0, 0.0, 0.0]
    assert labels.distance_ratio.tolist() == [0.0, 0.0, 0.0, 0.0]
    assert labels.nearest_index.tolist() == [3, 7, 7, 41]
    assert labels.copied.all()
    assert labels.rate == 1.0


def test_exact_copies_are_exactly_zero_even_where_the_expansion_cancels_badly():
    # Large norms: ||a||^2 - 2ab + ||b||^2 alone is off by ~0.1 here in float32.
    reference = _reference(n=300, shape=(3072,)) + 5.0
    distances, indices = nearest_neighbours(reference[:20], reference, k=2)
    assert torch.equal(distances[:, 0], torch.zeros(20))
    assert torch.equal(indices[:, 0], torch.arange(20))


def test_near_copies_are_copied():
    reference = _reference()
    generator = torch.Generator().manual_seed(1)
    near = reference[:10] + 0.01 * torch.randn(10, 1, 8, 8, generator=generator)
    labels = memorization_labels(near, reference)
    assert labels.nearest_index.tolist() == list(range(10))
    assert (labels.distance_ratio < 0.05).all()
    assert labels.copied.all()
    assert labels.nearest_distance.allclose((near - reference[:10]).flatten(1).norm(dim=1))


def test_midpoints_between_two_training_points_are_not_copies():
    reference = _reference()
    midpoints = (reference[0:20:2] + reference[1:20:2]) / 2
    labels = memorization_labels(midpoints, reference)
    assert labels.distance_ratio.allclose(torch.ones(10), atol=1e-5)
    assert not labels.copied.any()
    assert labels.rate == 0.0
    # The two nearest are the two endpoints.
    _, indices = nearest_neighbours(midpoints, reference, k=2)
    assert indices.sort(dim=1).values.tolist() == [[2 * i, 2 * i + 1] for i in range(10)]


def test_ratio_is_strict_and_configurable():
    reference = torch.tensor([[0.0], [3.0], [-10.0]])
    sample = torch.tensor([[1.0]])  # d1 = 1, d2 = 2: ratio 1/2
    assert memorization_labels(sample, reference).distance_ratio.item() == 0.5
    assert not memorization_labels(sample, reference).copied.item()
    assert not memorization_labels(sample, reference, ratio=0.5).copied.item()
    assert memorization_labels(sample, reference, ratio=0.51).copied.item()


def test_rate_is_the_fraction_copied():
    reference = _reference()
    samples = torch.cat([reference[:3], (reference[10:12] + reference[12:14]) / 2])
    labels = memorization_labels(samples, reference)
    assert labels.copied.tolist() == [True, True, True, False, False]
    assert labels.rate == pytest.approx(0.6)


def test_matches_brute_force():
    reference = _reference(n=200)
    samples = _reference(n=30, seed=5)
    distances, indices = nearest_neighbours(samples, reference, k=5)
    expected = _brute_force(samples, reference, 5)
    assert torch.equal(indices, expected.indices)
    assert distances.double().allclose(expected.values, atol=1e-5)


@pytest.mark.parametrize("chunk_size", [5, 16, 39])
def test_chunking_gives_identical_results(chunk_size):
    # Chunks that split both sets unevenly (few blocks: tiny matmuls are slow on a loaded CPU).
    reference = _reference(n=40)
    samples = torch.cat([_reference(n=8, seed=5), reference[:4]])
    full = nearest_neighbours(samples, reference, k=3, chunk_size=4096)
    chunked = nearest_neighbours(samples, reference, k=3, chunk_size=chunk_size)
    assert torch.equal(full[0], chunked[0])
    assert torch.equal(full[1], chunked[1])
    labels_full = memorization_labels(samples, reference)
    labels_chunked = memorization_labels(samples, reference, chunk_size=chunk_size)
    assert torch.equal(labels_full.distance_ratio, labels_chunked.distance_ratio)
    assert torch.equal(labels_full.copied, labels_chunked.copied)
    assert labels_full.copied.tolist() == [False] * 8 + [True] * 4


def test_float64_and_float32_agree_and_keep_their_dtype():
    reference = _reference(n=100).double()
    samples = _reference(n=20, seed=3).double()
    d64, i64 = nearest_neighbours(samples, reference)
    d32, i32 = nearest_neighbours(samples.float(), reference.float())
    assert d64.dtype == torch.float64 and d32.dtype == torch.float32
    assert torch.equal(i64, i32)
    assert d32.double().allclose(d64, rtol=1e-5)
    # Mixed inputs compute in float64; half precision is upcast to float32.
    assert nearest_neighbours(samples.float(), reference)[0].dtype == torch.float64
    assert nearest_neighbours(samples.half(), reference.half())[0].dtype == torch.float32


def test_ties_prefer_the_lower_index_and_duplicated_references_defeat_the_ratio():
    base = _reference(n=10)
    reference = torch.cat([base, base[:1]])  # item 10 duplicates item 0
    distances, indices = nearest_neighbours(base[:1] + 0.01, reference, k=2)
    assert indices.tolist() == [[0, 10]]
    assert distances[0, 0] == distances[0, 1]
    assert memorization_labels(base[:1] + 0.01, reference).distance_ratio.item() == 1.0


def test_reference_of_two_identical_exact_copies_is_still_ratio_zero():
    reference = torch.zeros(2, 4)
    labels = memorization_labels(torch.zeros(1, 4), reference)
    assert labels.distance_ratio.item() == 0.0 and labels.copied.item()


def test_inputs_are_flattened_and_may_require_grad():
    reference = _reference(n=20, shape=(3, 4, 4)).requires_grad_()
    labels = memorization_labels(reference[:2].detach(), reference)
    assert labels.distance_ratio.tolist() == [0.0, 0.0]
    assert not labels.distance_ratio.requires_grad


def test_shape_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match="same per-item shape"):
        memorization_labels(torch.zeros(3, 1, 8, 8), torch.zeros(10, 64))
    with pytest.raises(ValueError, match=r"batches \[M, \*shape\]"):
        nearest_neighbours(torch.zeros(8), torch.zeros(10, 8))


def test_fewer_than_two_reference_points_is_a_clear_error():
    with pytest.raises(ValueError, match="at least 2 reference"):
        memorization_labels(torch.zeros(3, 4), torch.zeros(1, 4))
    with pytest.raises(ValueError, match="k=3 neighbours requested but the reference set holds 2"):
        nearest_neighbours(torch.zeros(3, 4), torch.zeros(2, 4), k=3)


def test_bad_arguments_are_clear_errors():
    reference = _reference(n=5)
    with pytest.raises(ValueError, match="samples is empty"):
        memorization_labels(reference[:0], reference)
    with pytest.raises(ValueError, match="ratio must be in"):
        memorization_labels(reference, reference, ratio=0.0)
    with pytest.raises(ValueError, match="k must be an int >= 1"):
        nearest_neighbours(reference, reference, k=0)
    with pytest.raises(ValueError, match="chunk_size must be an int >= 1"):
        nearest_neighbours(reference, reference, chunk_size=0)


def _binomial_tail(copies: int, n: int, p: float) -> float:
    """Reference: P(X >= copies) for X ~ Binomial(n, p), summed exactly over the pmf."""
    return sum(math.comb(n, j) * p**j * (1 - p) ** (n - j) for j in range(copies, n + 1))


@pytest.mark.parametrize(("copies", "n"), [(1, 1), (1, 64), (2, 16), (3, 64), (10, 64), (63, 64), (64, 64)])
def test_copy_rate_lower_bound_is_the_exact_clopper_pearson_bound(copies: int, n: int) -> None:
    """At the bound the binomial tail is 1 - confidence (the defining equation); values from scipy's
    ``beta.ppf(0.05, k, n - k + 1)`` pin it in absolute terms."""
    low = copy_rate_lower_bound(copies, n)
    assert 0 < low < copies / n or copies == n
    assert _binomial_tail(copies, n, low) == pytest.approx(1 - COPY_RATE_CONFIDENCE, rel=1e-9)
    scipy_values = {(2, 16): 0.022679, (3, 64): 0.012897}
    if (copies, n) in scipy_values:
        assert low == pytest.approx(scipy_values[copies, n], abs=1e-6)


def test_copy_rate_lower_bound_edges_and_confidence() -> None:
    assert copy_rate_lower_bound(0, 64) == 0.0
    assert copy_rate_lower_bound(64, 64) == pytest.approx(0.05 ** (1 / 64))
    # the default stop's arithmetic: with 64 probes two copies do not pass 1%, three do; with 16, two do
    assert copy_rate_lower_bound(2, 64) < 0.01 < copy_rate_lower_bound(3, 64)
    assert copy_rate_lower_bound(1, 16) < 0.01 < copy_rate_lower_bound(2, 16)
    assert copy_rate_lower_bound(5, 64, confidence=0.99) < copy_rate_lower_bound(5, 64, confidence=0.9)


def test_binomial_tail_against_exact_sums() -> None:
    for k, n, p in ((0, 8, 0.3), (1, 8, 0.3), (3, 16, 0.1), (16, 16, 0.5), (17, 16, 0.5), (2, 5, 0.0), (2, 5, 1.0)):
        assert binomial_tail(k, n, p) == pytest.approx(_binomial_tail(k, n, p), rel=1e-12, abs=1e-300)


@pytest.mark.parametrize("n", [8, 16, 32, 64, 100])
def test_copy_rate_power_is_the_tail_at_the_fewest_copies_that_pass(n: int) -> None:
    """The power at rate p: P(X >= k*) with k* the fewest copies whose lower bound passes the threshold; at most
    1 - confidence at a rate at the threshold (the bound's guarantee), rising with the rate."""
    passing = min(k for k in range(1, n + 1) if copy_rate_lower_bound(k, n) > 0.01)
    assert copy_rate_power(0.1, n, 0.01) == pytest.approx(sum(
        math.comb(n, j) * 0.1**j * 0.9 ** (n - j) for j in range(passing, n + 1)), rel=1e-12)
    assert copy_rate_power(0.01, n, 0.01) <= 1 - COPY_RATE_CONFIDENCE
    assert copy_rate_power(0.05, n, 0.01) < copy_rate_power(0.1, n, 0.01) < copy_rate_power(0.3, n, 0.01)


def test_copy_rate_power_of_the_default_rule() -> None:
    """The numbers the default rule's documentation states (CALIBRATED_RULES: 0.96 with 64 probes at 10%)."""
    assert [round(copy_rate_power(0.1, n, 0.01), 2) for n in (64, 32, 16)] == [0.96, 0.84, 0.49]
    assert copy_rate_power(0.5, 1, 0.99) == 0.0  # no count of one sample passes 99%


@pytest.mark.parametrize(("copies", "n", "confidence"), [(-1, 4, 0.95), (5, 4, 0.95), (0, 0, 0.95), (1.0, 4, 0.95),
                                                         (1, 4, 1.0), (1, 4, 0.0)])
def test_copy_rate_lower_bound_rejects_bad_counts(copies, n, confidence) -> None:
    with pytest.raises(ValueError, match=r"copies|confidence"):
        copy_rate_lower_bound(copies, n, confidence)
