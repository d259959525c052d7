r"""bf16 attention on CPU: the batched einsums (what accelerators and float32 run) against ``cpu_matmul.attention``
(per (batch, head) pair, hand-written backward), forward and forward + gradients, at S64's shapes.

Prints one line per shape: median ms of each path and the largest difference of the gradients relative to the
largest entry (bf16 rounding: the per-pair path keeps the logits in f32).

  python benchmarks/bench_attention.py                      # S64's shapes at batch 4 (and CFG batch 2, 8)
  python benchmarks/bench_attention.py --shapes=4x1024x512,4x1024x512x128 --reps 9
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

DEFAULT = "4x1024x512,4x256x768,4x1024x512x128,1x1024x512,2x1024x512,8x1024x512"


def _median_ms(fn, *args, reps: int) -> float:
    import jax
    import numpy as np

    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return float(np.median(times)) * 1e3


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default=DEFAULT, help="BxLxC[xS] (S keys: masked cross-attention), comma-separated")
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--reps", type=int, default=5)
    args = p.parse_args()

    import jax
    import jax.numpy as jnp
    import numpy as np

    from mdm_jax.models import cpu_matmul, layers

    print(f"bench_attention: {jax.devices()[0].device_kind}, bf16, {args.heads} heads, median of {args.reps}")
    for spec in args.shapes.split(","):
        dims = [int(x) for x in spec.split("x")]
        b, lq, c = dims[:3]
        lk = dims[3] if len(dims) > 3 else lq
        rng = np.random.default_rng(0)
        ch = c // args.heads
        q, k, v, ct = (jnp.asarray(rng.standard_normal(s), jnp.bfloat16)
                       for s in ((b, lq, args.heads, ch), (b, lk, args.heads, ch), (b, lk, args.heads, ch),
                                 (b, lq, args.heads, ch)))
        mask = None if lk == lq else jnp.asarray(rng.integers(0, 2, (b, lk)).astype(np.float32)).at[:, 0].set(1)
        masks = () if mask is None else (mask,)
        row = [f"B={b} Lq={lq} Lk={lk} C={c}:"]
        grads = {}
        for name, attn in (("batched", layers._batched_attention), ("per-pair", cpu_matmul.attention)):
            fwd = jax.jit(lambda q, k, v, *m, attn=attn: attn(q, k, v, *m))
            loss = jax.jit(jax.value_and_grad(
                lambda q, k, v, *m, attn=attn, ct=ct: jnp.sum(attn(q, k, v, *m).astype(jnp.float32) * ct),
                (0, 1, 2)))
            grads[name] = loss(q, k, v, *masks)[1]
            row.append(f"{name} fwd {_median_ms(fwd, q, k, v, *masks, reps=args.reps):7.1f} ms, "
                       f"fwd+grad {_median_ms(loss, q, k, v, *masks, reps=args.reps):7.1f} ms;")
        diff = max(float(jnp.abs(a.astype(jnp.float32) - r.astype(jnp.float32)).max()
                         / jnp.abs(r.astype(jnp.float32)).max())
                   for a, r in zip(grads["per-pair"], grads["batched"], strict=True))
        print(" ".join(row), f"max grad diff {diff:.1e}", flush=True)


if __name__ == "__main__":
    main()
