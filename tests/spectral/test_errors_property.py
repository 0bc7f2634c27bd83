"""Random bad inputs always give a clear error, never a wrong answer or an obscure crash."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from memcallback.spectral import MatrixOperator, jacobian_operator, lanczos, power_iteration

OP = MatrixOperator(torch.eye(6, dtype=torch.float64).expand(3, 6, 6))


@settings(max_examples=40, deadline=None)
@given(shape=st.lists(st.integers(1, 7), min_size=1, max_size=4))
def test_wrong_vector_shapes_are_rejected(shape):
    V = torch.ones(shape, dtype=torch.float64)
    if list(V.shape[:1]) == [3] and V.dim() == 3 and V.shape[2] == 6:
        assert OP(V).shape == V.shape
    else:
        with pytest.raises(ValueError, match=r"V must have shape \[B, m, \*shape\]"):
            OP(V)


@settings(max_examples=40, deadline=None)
@given(k=st.integers(-3, 12), solver=st.sampled_from([lanczos, power_iteration]))
def test_k_out_of_range_is_rejected(k, solver):
    if 1 <= k <= 6:
        assert solver(OP, k, "LA", generator=torch.Generator().manual_seed(0)).eigenvalues.shape == (3, k)
    else:
        with pytest.raises(ValueError, match=r"k must be an int with 1 <= k <= dim = 6"):
            solver(OP, k, "LA")


@settings(max_examples=25, deadline=None)
@given(
    row=st.integers(0, 3),
    col=st.integers(0, 4),
    value=st.sampled_from([float("nan"), float("inf"), -float("inf")]),
)
def test_non_finite_points_name_the_sample(row, col, value):
    x = torch.zeros(4, 5, dtype=torch.float64)
    x[row, col] = value
    with pytest.raises(ValueError, match=rf"x contains NaN/inf for sample\(s\) \[{row}\]"):
        jacobian_operator(torch.tanh, x)


@settings(max_examples=25, deadline=None)
@given(row=st.integers(0, 3))
def test_non_finite_products_name_the_sample(row):
    A = torch.eye(5, dtype=torch.float64).repeat(4, 1, 1)
    A[row, 0, 0] = 1e308
    op = MatrixOperator(A)
    with pytest.raises(FloatingPointError, match=rf"sample\(s\) \[{row}\]"):
        op(torch.full((4, 1, 5), 1e10, dtype=torch.float64))
