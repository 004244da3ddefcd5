"""The fast cached DiT step: compiled fixed-shape block halves, replayed as CUDA graphs.

A streaming pass has the same shapes chunk after chunk once the KV cache is full: the same query
tokens, the same cache slots written and read. :class:`FastDiT` exploits that:

* **compile** (``torch.compile``, CUDA): each block's two halves around the self-attention cache
  (:meth:`Block.attn_in`: norm1, modulation, q/k/v, q/k RMSNorm, RoPE in float64; :meth:`Block.attn_out`:
  output projection, gated residual, cross-attention, modulated FFN) are compiled with fixed shapes, so
  norms, modulation and RoPE fuse into few kernels. Every block shares one compiled graph (the same
  code; parameters are inputs), so start-up compiles two graphs, not sixty. The cache write and the
  attention over the cache stay outside (a plain copy and one attention kernel), so the compiled graphs
  never see the cache's growing length while it fills.
* **graphs** (CUDA): the second time a pass of a given shape and cache placement comes, the whole pass
  (embedding, all blocks, cache writes, head) is captured into a ``torch.cuda.CUDAGraph`` over static
  input buffers; from then on a pass is a few input copies and one graph launch. The eviction of old
  frames (:meth:`KVCache.roll`) and the cross-attention K/V of a new prompt are done outside the graph;
  the graph reads the cross K/V from static buffers refreshed before every replay.

The result equals ``CausalDiT.forward`` (same operations; compiled kernels may round differently in the
last bits). Without compile and graphs, a call is exactly ``dit(...)``.

Usage::

    fast = FastDiT(dit, compile=True, graphs=True)
    flow = fast(x, t, ctx, start_frame=f0, cache=kv, cross_cache=xkv, controls=c)
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, cast

import torch

from backend.model.attention import SdpaAttention
from backend.model.dit import Block, CausalDiT
from backend.model.kv_cache import CacheStep, CrossAttentionCache, KVCache

__all__ = ["FastDiT"]

logger = logging.getLogger(__name__)


class _StaticCross(CrossAttentionCache):
    """A filled cross-attention cache over fixed buffers (what a captured graph reads)."""

    def __init__(self, source: CrossAttentionCache) -> None:
        super().__init__(len(source._k))
        self._k = [k.clone() for k in source._k]  # type: ignore[union-attr]
        self._v = [v.clone() for v in source._v]  # type: ignore[union-attr]

    def refresh(self, source: CrossAttentionCache) -> None:
        """Copy ``source``'s K/V in (two batched copies; a prompt's K/V are small)."""
        torch._foreach_copy_(self._k, source._k)  # type: ignore[arg-type]
        torch._foreach_copy_(self._v, source._v)  # type: ignore[arg-type]


@dataclass
class _Graph:
    graph: torch.cuda.CUDAGraph
    inputs: dict[str, torch.Tensor]
    cross: _StaticCross
    out: torch.Tensor = field(repr=False)


class FastDiT:
    """Runs :class:`CausalDiT` cached passes compiled and/or as CUDA graphs (see the module docstring)."""

    def __init__(self, dit: CausalDiT, *, compile: bool = False, graphs: bool = False, max_graphs: int = 8) -> None:
        self.dit = dit
        self.graphs_enabled = graphs
        self.max_graphs = max_graphs
        self._graphs: dict[tuple, _Graph] = {}
        self._seen: dict[tuple, int] = {}
        self._pool: Any = None  # one graph memory pool shared by this runner's graphs
        self._cross_attn = SdpaAttention()  # 512 prompt keys: cheap whatever the kernel
        blocks = cast("list[Block]", list(dit.blocks))
        self._eager_in: list[Callable[..., Any]] = [b.attn_in for b in blocks]
        self._eager_out: list[Callable[..., Any]] = [b.attn_out for b in blocks]
        self._in, self._out = self._eager_in, self._eager_out
        if compile:
            self._in = [torch.compile(b.attn_in, dynamic=False) for b in blocks]
            self._out = [torch.compile(b.attn_out, dynamic=False) for b in blocks]
        self._shapes: dict[tuple[int, ...], int] = {}  # passes seen per input shape: compile only what repeats
        self.compiled = compile
        self.active = compile or graphs
        self.late_check = True  # before_launch after a graph's inputs are queued (False: before anything)

    @property
    def graph_count(self) -> int:
        return len(self._graphs)

    def reset_graphs(self) -> None:
        """Drop every captured graph (e.g. after the model's weights changed)."""
        self._graphs.clear()
        self._seen.clear()

    # -- the pass ----------------------------------------------------------------------------------
    def _pass(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
              cache: KVCache, step: CacheStep, cross: CrossAttentionCache, controls: torch.Tensor | None,
              cache_only: bool = False) -> torch.Tensor:
        """One cached pass with the cross K/V already in ``cross`` and the eviction done: no host work
        that depends on the data, so it can be captured."""
        seen = self._shapes[tuple(x.shape)] = self._shapes.get(tuple(x.shape), 0) + 1
        if seen == 2 and self._in is not self._eager_in and not (x.is_cuda and torch.cuda.is_current_stream_capturing()):
            try:  # the first compiled pass: if the compiler fails here, run eager from now on
                return self._run(self._in, self._out, x, t, context, cos, sin, cache, step, cross, controls, cache_only)
            except Exception as exc:
                logger.warning("torch.compile of the DiT blocks failed, running eager error=%s", exc)
                self._in, self._out, self.compiled = self._eager_in, self._eager_out, False
        halves_in, halves_out = (self._in, self._out) if seen >= 2 else (self._eager_in, self._eager_out)
        return self._run(halves_in, halves_out, x, t, context, cos, sin, cache, step, cross, controls, cache_only)

    def _run(self, halves_in: list, halves_out: list, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor,
             cos: torch.Tensor, sin: torch.Tensor, cache: KVCache, step: CacheStep, cross: CrossAttentionCache,
             controls: torch.Tensor | None, cache_only: bool = False) -> torch.Tensor:
        dit = self.dit
        h, e, e0, grid = dit._embed(x, t, controls, context)
        last = len(halves_in) - 1
        for i in range(len(halves_in)):
            q, k, v = halves_in[i](h, e0, cos, sin)
            k, v = cache.write(i, step, k, v)
            if cache_only and i == last:  # the cache is written: the rest of the block and the head feed no cache
                return h[:, :0]
            y = dit.attention(q, k, v)
            ck, cv = cross.get(i)  # type: ignore[misc]
            h = halves_out[i](h, y, e0, ck, cv, self._cross_attn)
        return dit.finish(h, e, grid, x, t)

    def __call__(self, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor, *, start_frame: int,
                 cache: KVCache, cross_cache: CrossAttentionCache, controls: torch.Tensor | None = None,
                 cache_only: bool = False, before_launch: Callable[[], None] | None = None) -> torch.Tensor:
        """As ``CausalDiT.forward`` with a cache: flow ``(B, out_dim, F, H, W)``; with ``cache_only`` (the pass
        that writes a chunk's clean K/V) the cache written the same and an empty tensor returned.

        ``before_launch()`` is called before the pass touches the cache (it may raise to stop the pass: the
        cache is then as before the call): for a captured graph after its inputs are queued, so what is left
        once it returns is the eviction and one graph launch (the generator's interrupt check waits there for
        the device to finish the previous pass)."""
        dit = self.dit
        if not self.active:
            if before_launch is not None:
                before_launch()
            return dit(x, t, context, start_frame=start_frame, cache=cache, cross_cache=cross_cache, controls=controls,
                       cache_only=cache_only)
        if before_launch is not None and not self.late_check:  # the former way (benchmarks compare)
            before_launch()
            before_launch = None
        s = dit.sizes
        b, _, f, hh, ww = x.shape
        _, ph, pw = s.patch_size
        gh, gw = hh // ph, ww // pw
        if cache.frame_tokens != gh * gw:
            raise ValueError(f"KV cache holds {cache.frame_tokens} tokens per frame, the input has {gh * gw}")
        assert t.shape == (b, f), f"timesteps must be (B, F) = {(b, f)}, got {tuple(t.shape)}"
        if not cross_cache.filled:  # a new prompt: its cross K/V, once, outside any graph
            ctx = dit.embed_context(context, x.dtype)
            for i in range(s.num_layers):
                dit.cross_kv(i, ctx, cross_cache)
        step = cache.plan(start_frame * cache.frame_tokens, f * cache.frame_tokens)  # rolled just before the pass
        cos, sin = dit.rope.angles(start_frame, f, gh, gw, x.device)
        key = (tuple(x.shape), x.dtype, tuple(context.shape), controls is None, step.write_start, step.write_end,
               cache_only)
        graph = self._graphs.get(key) if self.graphs_enabled and x.is_cuda else None
        if graph is None and self.graphs_enabled and x.is_cuda and len(self._graphs) < self.max_graphs:
            self._seen[key] = self._seen.get(key, 0) + 1
            warm = not self.compiled or self._shapes.get(tuple(x.shape), 0) >= 2  # compiled halves ran once
            if self._seen[key] >= 2 and warm:  # a repeating pass with warm kernels: worth a graph
                if before_launch is not None:
                    before_launch()
                    before_launch = None
                step = cache.roll(step)
                graph = self._capture(key, x, t, context, cos, sin, cache, step, cross_cache, controls, cache_only)
        if graph is not None:
            graph.inputs["x"].copy_(x)
            graph.inputs["t"].copy_(t)
            graph.inputs["context"].copy_(context)
            graph.inputs["cos"].copy_(cos)
            graph.inputs["sin"].copy_(sin)
            if controls is not None:
                graph.inputs["controls"].copy_(controls)
            graph.cross.refresh(cross_cache)
            if before_launch is not None:
                before_launch()
            step = cache.roll(step)
            graph.graph.replay()
            out = graph.out.clone()  # the next replay overwrites graph.out
        else:
            if before_launch is not None:
                before_launch()
            step = cache.roll(step)
            out = self._pass(x, t, context, cos, sin, cache, step, cross_cache, controls, cache_only)
        cache.commit(step)
        return out

    def _capture(self, key: tuple, x: torch.Tensor, t: torch.Tensor, context: torch.Tensor, cos: torch.Tensor,
                 sin: torch.Tensor, cache: KVCache, step: CacheStep, cross_cache: CrossAttentionCache,
                 controls: torch.Tensor | None, cache_only: bool = False) -> _Graph | None:
        inputs = {"x": x.clone(), "t": t.clone(), "context": context.clone(), "cos": cos.clone(), "sin": sin.clone()}
        if controls is not None:
            inputs["controls"] = controls.clone()
        cross = _StaticCross(cross_cache)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        torch.cuda.synchronize()
        try:
            # thread_local: other threads (the voice model on the same GPU, say) may keep using CUDA meanwhile
            with torch.cuda.graph(graph, pool=self._pool, capture_error_mode="thread_local"):
                out = self._pass(inputs["x"], inputs["t"], inputs["context"], inputs["cos"], inputs["sin"], cache,
                                 step, cross, inputs.get("controls"), cache_only)
        except Exception as exc:  # a kernel that cannot be captured: run without graphs from now on
            logger.warning("CUDA graph capture failed, running without graphs error=%s", exc)
            self.graphs_enabled = False
            torch.cuda.synchronize()
            return None
        captured = _Graph(graph=graph, inputs=inputs, cross=cross, out=out)
        self._graphs[key] = captured
        logger.info("captured a CUDA graph of the DiT pass shape=%s slots=%d..%d graphs=%d", key[0], step.write_start,
                    step.write_end, len(self._graphs))
        return captured
