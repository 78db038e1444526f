"""ir/scalar.py: cached 0-dim constants behave as the Python numbers they stand for."""
import torch

from lirpac.ir.scalar import scalar


def test_scalar_has_the_operand_dtype_and_is_cached():
    for dtype in (torch.float32, torch.float64):
        like = torch.zeros(3, dtype=dtype)
        half = scalar(0.5, like)
        assert half.dim() == 0 and half.dtype == dtype and half.item() == 0.5
        assert scalar(0.5, like) is half
    x = torch.tensor([1.0, 3.0])
    assert torch.equal(x * scalar(0.5, x), x / 2)


def test_scalar_made_in_inference_mode_serves_autograd_later():
    w = torch.tensor([2.0, -1.0], dtype=torch.float64, requires_grad=True)
    with torch.inference_mode():
        third = scalar(1 / 3, torch.zeros((), dtype=torch.float64))
    assert not third.is_inference()
    (w * third).sum().backward()
    torch.testing.assert_close(w.grad, torch.full((2,), 1 / 3, dtype=torch.float64))


def test_centre_radius_is_the_halved_sum_and_difference():
    from lirpac.ir.scalar import centre_radius
    for dtype in (torch.float32, torch.float64):
        g = torch.Generator().manual_seed(0)
        lower = torch.randn(3, 5, generator=g, dtype=dtype)
        upper = lower + torch.rand(3, 5, generator=g, dtype=dtype)
        centre, radius = centre_radius(lower, upper)
        assert centre.dtype == radius.dtype == dtype
        assert torch.equal(centre, (upper + lower) / 2) and torch.equal(radius, (upper - lower) / 2)
