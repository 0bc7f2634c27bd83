import pytest
import torch
from analytic import GaussianModel

from memcallback.diffusion import PREDICTION_TYPES, convert, score


@pytest.mark.parametrize("source", PREDICTION_TYPES)
@pytest.mark.parametrize("target", PREDICTION_TYPES)
def test_conversions_round_trip(source: str, target: str) -> None:
    gen = torch.Generator().manual_seed(1)
    x_t = torch.randn(5, 3, generator=gen, dtype=torch.float64)
    out = torch.randn(5, 3, generator=gen, dtype=torch.float64)
    alpha = torch.rand(5, 1, generator=gen, dtype=torch.float64) * 0.9 + 0.05
    sigma = (1 - alpha**2).sqrt()
    there = convert(out, x_t, alpha, sigma, source, target)
    back = convert(there, x_t, alpha, sigma, target, source)
    torch.testing.assert_close(back, out)


def test_conversions_match_forward_process() -> None:
    x0, eps = torch.randn(4, 2, dtype=torch.float64), torch.randn(4, 2, dtype=torch.float64)
    alpha = torch.tensor([[0.9], [0.5], [0.2], [0.99]], dtype=torch.float64)
    sigma = (1 - alpha**2).sqrt()
    x_t = alpha * x0 + sigma * eps
    v = alpha * eps - sigma * x0
    torch.testing.assert_close(convert(eps, x_t, alpha, sigma, "epsilon", "sample"), x0)
    torch.testing.assert_close(convert(eps, x_t, alpha, sigma, "epsilon", "v_prediction"), v)
    torch.testing.assert_close(convert(v, x_t, alpha, sigma, "v_prediction", "epsilon"), eps)
    torch.testing.assert_close(convert(x0, x_t, alpha, sigma, "sample", "score"), -eps / sigma)


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
def test_score_of_gaussian_model_is_exact(gaussian_model: GaussianModel, prediction_type: str) -> None:
    gaussian_model.prediction_type = prediction_type
    x = torch.randn(6, 3, dtype=torch.float64)
    for t in (0, 50, 199):
        tt = torch.full((6,), t)
        torch.testing.assert_close(score(gaussian_model, x, t), gaussian_model.exact_score(x, tt))


def test_unknown_prediction_type() -> None:
    x = torch.zeros(1, 2)
    with pytest.raises(ValueError, match="Unknown prediction_type"):
        convert(x, x, x, x, "eps", "score")
