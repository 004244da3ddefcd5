"""Few-step flow-matching schedule and the per-chunk sampling loop."""

from __future__ import annotations

import pytest
import torch

from backend.model.sampler import FlowMatchSchedule, sample_chunk


def test_warp_matches_self_forcing() -> None:
    sched = FlowMatchSchedule(shift=5.0)
    assert sched.warp_list([1000, 750, 500, 250]) == pytest.approx([1000.0, 937.5, 833.3333, 625.0], abs=1e-3)
    assert sched.warp(0.0) == 0.0
    sig = sched.sigma_nearest(torch.tensor([1000.0, 0.0]))
    assert sig.tolist() == pytest.approx([1.0, 0.00498], abs=1e-6)  # t=0 -> nearest training step, not 0
    with pytest.raises(ValueError, match="outside"):
        sched.warp(1200.0)


def test_sample_chunk_calls_steps_then_clean_pass() -> None:
    sched = FlowMatchSchedule(shift=5.0)
    calls = []

    def flow_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:  # the two-argument form
        calls.append((x.clone(), t.clone()))
        return torch.full_like(x, 0.5)

    noise = torch.randn(1, 2, 3, 2, 2, generator=torch.Generator().manual_seed(0))
    ts = sched.warp_list([1000, 750, 500])
    x0 = sample_chunk(flow_fn, noise, ts, sched, torch.Generator().manual_seed(1))
    assert [c[1][0, 0].item() for c in calls] == pytest.approx([*ts, 0.0])
    torch.testing.assert_close(calls[0][0], noise)
    torch.testing.assert_close(calls[-1][0], x0)  # the t=0 pass sees the clean result
    sigma_last = sched.sigma_nearest(torch.tensor([ts[-1]])).item()
    torch.testing.assert_close(x0, calls[-2][0] - sigma_last * 0.5, atol=1e-6, rtol=0)
    # same generator seed => same result; another seed => another re-noise
    calls.clear()
    again = sample_chunk(flow_fn, noise, ts, sched, torch.Generator().manual_seed(1))
    other = sample_chunk(flow_fn, noise, ts, sched, torch.Generator().manual_seed(2))
    assert torch.equal(x0, again) and not torch.equal(x0, other)


def test_step_count_bounds() -> None:
    sched = FlowMatchSchedule()
    with pytest.raises(ValueError, match="1 to 4"):
        sample_chunk(lambda x, t: x, torch.zeros(1, 1, 1), [], sched, torch.Generator())


def test_noise_drawn_up_front_keeps_the_one_by_one_order() -> None:
    """The re-noise draws are made before the loop (one copy to the device), in the order the loop uses."""
    sched = FlowMatchSchedule(shift=5.0)
    xs = []

    def flow_fn(x: torch.Tensor, t: torch.Tensor, t_value: float) -> torch.Tensor:
        assert (t == t_value).all()  # the host float is the device timesteps' value
        xs.append(x.clone())
        return torch.zeros_like(x)

    noise = torch.randn(1, 2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    ts = sched.warp_list([1000, 750, 500])
    x0 = sample_chunk(flow_fn, noise, ts, sched, torch.Generator().manual_seed(7), context_t=100.0)
    g = torch.Generator().manual_seed(7)
    eps = [torch.randn(noise.shape, generator=g) for _ in range(3)]  # step 1, step 2, then the context
    torch.testing.assert_close(xs[1], sched.renoise(noise, eps[0], ts[1]))
    torch.testing.assert_close(xs[3], sched.renoise(x0, eps[2], 100.0))
