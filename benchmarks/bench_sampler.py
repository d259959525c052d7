"""Sampler compile time and per-step time at several step counts (prints a table).

The whole trajectory is one jit over a lax.scan, so compile time should be flat in the number of steps and the
run time linear. Models: the parity fixture models ``p1`` / ``p2`` (random weights, configs from
``shared/parity/configs.json``), any paper architecture (``S64``, ``S64S256``, ``S64S256S1024``, ...; big: use a
GPU), or ``standin`` (a two-conv stand-in network, no mdm_jax.models needed).

    XLA_FLAGS=--xla_cpu_use_xnnpack=true python benchmarks/bench_sampler.py --model p2 --steps 10,50,250
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from mdm_jax.diffusion.sampler import lower_sample  # noqa: E402
from mdm_jax.diffusion.spec import DiffusionSpec  # noqa: E402
from mdm_jax.models.precision import cast_kernels  # noqa: E402

PARITY = Path(os.environ.get("MDM_PARITY_DIR", Path(__file__).resolve().parents[2] / "shared" / "parity"))


def fixture_model(name: str, batch: int, tokens: int, dtype: str = "float32", parity: Path | None = None):
    """(apply_fn, params, spec, top_shape, cond) for a parity fixture model with random weights."""
    from mdm_jax.diffusion.parity import spec_for_fixture
    from mdm_jax.models import build_model, spec_from_config

    entry = json.loads((Path(parity or PARITY) / "configs.json").read_text())["models"][name]
    cfg = dict(entry["unet_config"])
    cfg["resolution"] = entry["derived"]["resolutions"][0]
    return _flax_model(build_model(spec_from_config(cfg), dtype=dtype), spec_for_fixture(entry), batch, tokens)


def architecture_model(name: str, batch: int, tokens: int, power: float, dtype: str = "float32"):
    from mdm_jax.models import build_model, spec_from_config
    from mdm_jax.models.architectures import get_architecture

    mspec = spec_from_config(get_architecture(name))
    nest = list(mspec.scales[:-1])
    dspec = DiffusionSpec(scales=tuple(mspec.scales), schedule_shifted=len(nest) > 0, schedule_shifted_power=power)
    return _flax_model(build_model(mspec, dtype=dtype), dspec, batch, tokens)


def _flax_model(model, dspec: DiffusionSpec, batch: int, tokens: int):
    mspec = model.spec
    res = mspec.resolutions
    xs = [jnp.zeros((1, r, r, 3), jnp.float32) for r in res]
    dim = mspec.innermost.input_cond_dim
    text = (jnp.zeros((1, tokens, dim)), jnp.ones((1, tokens))) if mspec.uses_text else (None, None)
    params = jax.jit(lambda k: model.init(k, xs, jnp.zeros((1,)), *text))(jax.random.PRNGKey(0))["params"]
    rng = np.random.default_rng(0)
    cond = {}
    if mspec.uses_text:
        cond = {"lm_outputs": jnp.asarray(rng.standard_normal((2 * batch, tokens, dim)), jnp.float32),
                "lm_mask": jnp.ones((2 * batch, tokens), jnp.float32)}

    def apply_fn(p, xs, t, c):
        return model.apply({"params": p}, list(xs), t, c.get("lm_outputs"), c.get("lm_mask"))

    n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
    # As the trainer's and the pipeline's samplers do: kernels cast to the compute dtype once, not per step.
    params = cast_kernels(params, model.dtype)
    return apply_fn, params, dspec, (batch, res[0], res[0], 3), cond, n


def standin_model(batch: int, res: int):
    """A tiny conv stand-in: one 3x3 conv per level conditioned on t (for when the real model is unavailable)."""
    dspec = DiffusionSpec(scales=(4, 1))
    k = jax.random.split(jax.random.PRNGKey(0), 4)
    params = {"w": [0.1 * jax.random.normal(k[i], (3, 3, 3, 3)) for i in range(2)],
              "t": [0.01 * jax.random.normal(k[2 + i], (3,)) for i in range(2)]}

    def apply_fn(p, xs, t, c):
        outs = []
        for x, w, tw in zip(xs, p["w"], p["t"], strict=True):
            y = jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
            outs.append(y + jnp.sin(t.astype(jnp.float32) / 100)[:, None, None, None] * tw)
        return outs

    cond = {"dummy": jnp.zeros((2 * batch,))}
    return apply_fn, params, dspec, (batch, res, res, 3), cond, sum(x.size for x in jax.tree.leaves(params))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="p2", help="p1 | p2 | S64 | S64S256 | S64S256S1024 | ... | standin")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=16, help="text length for text-conditioned models")
    ap.add_argument("--steps", default="10,50,250")
    ap.add_argument("--method", default="ddim", choices=["ddim", "ddpm"])
    ap.add_argument("--eta", type=float, default=0.0)
    ap.add_argument("--guidance", type=float, default=7.5, help="CFG weight; <= 0 disables CFG")
    ap.add_argument("--threshold", default="dynamic_if")
    ap.add_argument("--power", type=float, default=1.0, help="schedule_shifted_power for architecture models")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=1,
                    help="untimed runs before the timed ones (0 for long runs: compilation is already separate)")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="computation dtype")
    args = ap.parse_args()

    if args.model in ("p1", "p2"):
        apply_fn, params, spec, shape, cond, n = fixture_model(args.model, args.batch, args.tokens, args.dtype)
    elif args.model == "standin":
        apply_fn, params, spec, shape, cond, n = standin_model(args.batch, 64)
    else:
        apply_fn, params, spec, shape, cond, n = architecture_model(args.model, args.batch, args.tokens, args.power,
                                                                    args.dtype)
    use_cfg = args.guidance > 0
    if not use_cfg:
        cond = jax.tree.map(lambda a: a[: args.batch], cond)
    model_fn = jax.tree_util.Partial(apply_fn, params)
    print(f"device={jax.devices()[0].device_kind} backend={jax.default_backend()} "
          f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
    print(f"model={args.model} params={n:,} levels={spec.scales} top={shape} cfg={use_cfg} method={args.method} "
          f"eta={args.eta} threshold={args.threshold}")
    print(f"{'steps':>6} {'lower_s':>8} {'compile_s':>10} {'run_s':>8} {'ms/step':>8} {'images/min':>10}")
    for steps in [int(s) for s in args.steps.split(",")]:
        t0 = time.perf_counter()
        lowered, call_args = lower_sample(
            model_fn, spec, cond, shape=shape, rng=jax.random.PRNGKey(1), num_steps=steps, method=args.method,
            eta=jnp.float32(args.eta) if args.eta else 0.0, guidance_weight=args.guidance if use_cfg else None,
            threshold_kind=args.threshold)
        t1 = time.perf_counter()
        compiled = lowered.compile()
        t2 = time.perf_counter()
        for _ in range(args.warmup):
            jax.block_until_ready(compiled(*call_args))
        runs = []
        for _ in range(args.repeats):
            t3 = time.perf_counter()
            jax.block_until_ready(compiled(*call_args))
            runs.append(time.perf_counter() - t3)
        run = min(runs)
        print(f"{steps:>6} {t1 - t0:>8.2f} {t2 - t1:>10.2f} {run:>8.3f} {1000 * run / steps:>8.2f} "
              f"{60 * shape[0] / run:>10.2f}", flush=True)


if __name__ == "__main__":
    main()
