"""Few-step flow-matching sampler, as Self-Forcing's ``FlowMatchScheduler`` + ``CausalInferencePipeline``.

The training schedule has ``num_train_steps`` (1000) sigmas ``linspace(1, 0, 1001)[:-1]`` warped by
``sigma = shift*s / (1 + (shift-1)*s)``; its timesteps are ``1000*sigma``. The configured inference
timesteps go through the same warp (1000, 750, 500, 250 -> 1000, 937.5, 833.33, 625 at shift 5).
Each step predicts ``x0 = x - sigma*flow`` (sigma by nearest training timestep, in float64, as the
reference wrapper; t=0 gives sigma 0.00498) and re-noises ``x = (1-sigma')*x0 + sigma'*eps`` with
seeded noise. After the last step one more pass at t=0 on the clean x0 writes the KV cache.

Usage::

    sched = FlowMatchSchedule(shift=5.0)
    ts = sched.warp_list(cfg.timesteps[:steps])
    x0 = sample_chunk(flow_fn, noise, ts, sched, generator)   # flow_fn(x, t, t_value) -> flow, same layout as x
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence

import torch

__all__ = ["FlowMatchSchedule", "sample_chunk"]

# flow_fn(x, t) or flow_fn(x, t, t_value): t on the device, t_value the same timestep as a host float
FlowFn = Callable[..., torch.Tensor]


def _takes_t_value(fn: FlowFn) -> bool:
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return False
    return any(p.kind == p.VAR_POSITIONAL for p in params) or len(params) >= 3


class FlowMatchSchedule:
    """The 1000-step training schedule with a shift; lookups by nearest training timestep."""

    def __init__(self, shift: float = 5.0, num_train_steps: int = 1000) -> None:
        if shift <= 0 or num_train_steps < 1:
            raise ValueError(f"FlowMatchSchedule: need shift > 0 and num_train_steps >= 1, got {shift}, {num_train_steps}")
        self.shift = shift
        self.num_train_steps = num_train_steps
        s = torch.linspace(1.0, 0.0, num_train_steps + 1)[:-1]  # float32, as the reference
        self.sigmas = shift * s / (1 + (shift - 1) * s)
        self.timesteps = self.sigmas * num_train_steps

    def warp(self, t: float) -> float:
        """The shifted timestep for an unshifted ``t`` in [0, num_train_steps]."""
        if not 0.0 <= t <= self.num_train_steps:
            raise ValueError(f"timestep {t} outside [0, {self.num_train_steps}]")
        s = t / self.num_train_steps
        return self.num_train_steps * self.shift * s / (1 + (self.shift - 1) * s)

    def warp_list(self, ts: Sequence[float]) -> list[float]:
        return [self.warp(float(t)) for t in ts]

    def sigma_nearest(self, t: torch.Tensor) -> torch.Tensor:
        """float64 sigma of the training timestep nearest to each value of ``t``."""
        ts = self.timesteps.double().to(t.device)
        idx = torch.argmin((ts.unsqueeze(0) - t.double().reshape(-1, 1)).abs(), dim=1)
        return self.sigmas.double().to(t.device)[idx].reshape(t.shape)

    def to_x0(self, x: torch.Tensor, flow: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``x - sigma(t)*flow`` in float64; ``x``/``flow`` ``(B, F, ...)``, ``t`` ``(B, F)``."""
        sigma = self.sigma_nearest(t).reshape(*t.shape, *([1] * (x.ndim - t.ndim)))
        return (x.double() - sigma * flow.double()).to(flow.dtype)

    def to_x0_at(self, x: torch.Tensor, flow: torch.Tensor, t: float) -> torch.Tensor:
        """:meth:`to_x0` for one host timestep shared by every frame: the same float64 result, with sigma
        looked up on the host (no device lookup, nothing to wait for)."""
        sigma = float(self.sigma_nearest(torch.tensor([t], dtype=torch.float32))[0])  # float32 t, as to_x0 sees it
        return (x.double() - sigma * flow.double()).to(flow.dtype)

    def renoise(self, x0: torch.Tensor, eps: torch.Tensor, t_next: float) -> torch.Tensor:
        """``(1 - sigma)*x0 + sigma*eps`` with ``sigma = t_next / num_train_steps`` (an already warped t)."""
        sigma = t_next / self.num_train_steps
        return (1 - sigma) * x0 + sigma * eps


def sample_chunk(flow_fn: FlowFn, noise: torch.Tensor, timesteps: Sequence[float], schedule: FlowMatchSchedule,
                 generator: torch.Generator, *, cache_pass: bool = True, context_t: float = 0.0) -> torch.Tensor:
    """Denoise ``noise`` ``(B, F, ...)`` over the warped ``timesteps`` (1..4); return x0.

    ``flow_fn(x, t)`` runs the model at per-frame timesteps ``t`` ``(B, F)``; a ``flow_fn(x, t, t_value)``
    also gets their common value as a host float, to branch on without reading the device. Every call
    is for the same chunk, so the KV cache slots of the chunk are overwritten each time. With ``cache_pass``
    a last call at t=0 on the clean x0 leaves the clean K/V in the cache; with ``context_t`` > 0 (a model
    trained with context noise) that pass sees x0 re-noised to ``context_t`` instead. Re-noising draws from
    ``generator`` (CPU) so the same seed gives the same frames on every device; all of a chunk's draws are
    made up front (in the same order as one by one) and moved to the device in one copy, so the loop
    never waits on the device.
    """
    if not 1 <= len(timesteps) <= 4:
        raise ValueError(f"sampler: 1 to 4 timesteps, got {list(timesteps)}")
    b, f = noise.shape[:2]
    with_value = _takes_t_value(flow_fn)

    def call(x: torch.Tensor, t_val: float) -> torch.Tensor:
        t = torch.full((b, f), t_val, dtype=torch.float32, device=noise.device)
        return flow_fn(x, t, t_val) if with_value else flow_fn(x, t)

    draws = len(timesteps) - 1 + int(cache_pass and context_t > 0)
    eps_all = None
    if draws:
        host = torch.empty((draws, *noise.shape), dtype=torch.float32)
        for i in range(draws):
            torch.randn(noise.shape, generator=generator, dtype=torch.float32, out=host[i])
        if noise.device.type == "cuda":
            host = host.pin_memory()
        eps_all = host.to(noise.device, noise.dtype, non_blocking=True)
    x = noise
    x0 = noise
    for i, t_val in enumerate(timesteps):
        flow = call(x, float(t_val))
        x0 = schedule.to_x0_at(x, flow, float(t_val))
        if i + 1 < len(timesteps):
            assert eps_all is not None
            x = schedule.renoise(x0, eps_all[i], float(timesteps[i + 1]))
    if cache_pass:
        ctx = x0
        if context_t > 0:
            assert eps_all is not None
            ctx = schedule.renoise(x0, eps_all[-1], context_t)
        call(ctx, float(context_t))
    return x0
