"""The optimizer of Appendix B (Adam, warmup, global-norm clipping) with per-subtree freezing and lr multipliers.

Frozen subtrees are handled twice on purpose: the train step wraps them in ``stop_gradient`` (so they neither
cost a weight-gradient computation nor count in the clipping norm, as ``requires_grad=False`` in PyTorch), and
the optimizer maps them to ``set_to_zero`` (so they carry no Adam moments).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import traverse_util

FROZEN = "frozen"
DEFAULT = "default"


def under(path: str, prefix: str) -> bool:
    """Whether '/'-joined ``path`` lies in the subtree ``prefix`` ('' is the whole tree)."""
    return not prefix or path == prefix or path.startswith(prefix.rstrip("/") + "/")


def learning_rate_schedule(cfg: Mapping[str, Any], total_steps: int = 0) -> optax.Schedule:
    """Linear warmup from 0 to ``learning_rate`` over ``warmup_steps``, then constant (ml-mdm, ``lr_decay='none'``)
    or a cosine from ``learning_rate`` to ``final_lr_fraction`` of it at ``total_steps`` (the phase's steps: each
    phase restarts its optimizer), which short runs need to end on a settled model."""
    lr, warmup = float(cfg["learning_rate"]), int(cfg.get("warmup_steps", 0))
    decay = cfg.get("lr_decay", "none") or "none"
    if decay not in ("none", "cosine"):
        raise ValueError(f"optimizer.lr_decay: expected 'none' or 'cosine', got {decay!r}")
    if decay == "cosine":
        if total_steps <= warmup:
            raise ValueError(f"optimizer.lr_decay='cosine' needs the phase's steps ({total_steps}) to exceed "
                             f"optimizer.warmup_steps ({warmup})")
        final = float(cfg.get("final_lr_fraction", 0.0))
        return optax.warmup_cosine_decay_schedule(0.0, lr, max(warmup, 0), total_steps, end_value=lr * final)
    if warmup <= 0:
        return optax.constant_schedule(lr)
    return optax.linear_schedule(0.0, lr, warmup)


def param_labels(params: Any, freeze: Sequence[str] = (), lr_multipliers: Mapping[str, float] | None = None) -> Any:
    """Tree of labels: 'frozen', 'lr*<m>' for a multiplier, else 'default'. Unknown prefixes raise."""
    flat = traverse_util.flatten_dict(params, sep="/")
    multipliers = dict(lr_multipliers or {})
    for prefix in [*freeze, *multipliers]:
        if not any(under(k, prefix) for k in flat):
            tops = sorted({k.split("/")[0] for k in flat})
            raise ValueError(f"freeze/lr_multipliers: no parameter under {prefix!r} (top-level subtrees: {tops})")

    def label(path: str) -> str:
        if any(under(path, f) for f in freeze):
            return FROZEN
        best = max((p for p in multipliers if under(path, p)), key=len, default=None)  # most specific wins
        if best is None or float(multipliers[best]) == 1.0:
            return DEFAULT
        return f"lr*{float(multipliers[best])!r}"

    return traverse_util.unflatten_dict({k: label(k) for k in flat}, sep="/")


def frozen_mask(labels: Any) -> Any:
    return jax.tree.map(lambda label: label == FROZEN, labels)


def clip_by_global_norm(max_norm: float) -> optax.GradientTransformation:
    """torch's ``clip_grad_norm_`` (ml-mdm's clipping): every gradient times ``min(1, max_norm / (norm + 1e-6))``.

    One scalar multiply, where ``optax.clip_by_global_norm`` divides every element by the norm: XLA does not
    duplicate a divide into the several consumers of a gradient (Adam's two moments), so it keeps a clipped copy
    of all gradients, one more parameter-sized buffer at the step's peak (1.7 GiB for MDM-S64). A multiply fuses
    into each consumer instead."""

    def update(updates: Any, state: optax.EmptyState, params: Any = None) -> tuple[Any, optax.EmptyState]:
        del params
        norm = optax.tree.norm(updates)
        scale = jnp.minimum(1.0, max_norm / (norm + 1e-6))
        return jax.tree.map(lambda g: g * scale.astype(g.dtype), updates), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def scale_by_adam(b1: float, b2: float, eps: float, mu_dtype: Any = None) -> optax.GradientTransformation:
    """``optax.scale_by_adam`` (the same state, the same float32 arithmetic), except that a low-precision
    ``mu_dtype`` first moment enters the update *as stored* (rounded), not as the float32 value it is rounded from.

    Why: with both, every moment has two readers of its old value (the update and the rounding) and one in-place
    writer, so XLA keeps a copy of every stored moment (0.86 GiB for MDM-S64 in bfloat16, plus ~700 copy ops);
    reading the rounded moment back orders the write before the read and needs no copy. The update then sees the
    same moment a resumed run would. With ``mu_dtype`` None (float32) this is optax's transform itself."""
    if mu_dtype is None or jnp.dtype(mu_dtype) == jnp.float32:
        return optax.scale_by_adam(b1=b1, b2=b2, eps=eps, mu_dtype=mu_dtype)
    init = optax.scale_by_adam(b1=b1, b2=b2, eps=eps, mu_dtype=mu_dtype).init

    def update(updates: Any, state: optax.ScaleByAdamState, params: Any = None) -> tuple[Any, Any]:
        del params
        mu = optax.tree.cast(optax.tree.update_moment(updates, state.mu, b1, 1), mu_dtype)
        nu = optax.tree.update_moment_per_elem_norm(updates, state.nu, b2, 2)
        count = optax.safe_increment(state.count)
        c1, c2 = 1 - b1 ** count, 1 - b2 ** count  # float32, as optax computes them

        def step(m: jax.Array, v: jax.Array, g: jax.Array) -> jax.Array:
            return (m.astype(g.dtype) / c1.astype(g.dtype)) / (jnp.sqrt(v / c2.astype(v.dtype)) + eps)

        nu = optax.tree.cast_like(nu, state.nu)
        return jax.tree.map(step, mu, nu, updates), optax.ScaleByAdamState(count=count, mu=mu, nu=nu)

    return optax.GradientTransformation(init, update)


def make_optimizer(cfg: Mapping[str, Any], labels: Any,
                   total_steps: int = 0) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """clip_by_global_norm -> Adam(W) -> lr schedule (x multiplier per label); returns (tx, base schedule).
    ``total_steps``: the phase's steps, the length of a decaying schedule."""
    schedule = learning_rate_schedule(cfg, total_steps)
    mu_dtype = jnp.dtype(cfg["mu_dtype"]) if cfg.get("mu_dtype") else None

    def adam(multiplier: float) -> optax.GradientTransformation:
        parts = [scale_by_adam(b1=cfg["b1"], b2=cfg["b2"], eps=cfg["eps"], mu_dtype=mu_dtype)]
        if cfg.get("name", "adam") == "adamw" and float(cfg.get("weight_decay", 0.0)) > 0:
            parts.append(optax.add_decayed_weights(float(cfg["weight_decay"])))
        elif cfg.get("name", "adam") not in ("adam", "adamw"):
            raise ValueError(f"optimizer.name: expected 'adam' or 'adamw', got {cfg['name']!r}")
        sched = schedule if multiplier == 1.0 else (lambda step: schedule(step) * multiplier)
        parts.append(optax.scale_by_learning_rate(sched))
        return optax.chain(*parts)

    clip = float(cfg.get("grad_clip_norm", 0.0))
    head = [clip_by_global_norm(clip)] if clip > 0 else []
    names = sorted(set(jax.tree.leaves(labels)))
    if names == [DEFAULT]:
        return optax.chain(*head, adam(1.0)), schedule
    transforms = {}
    for name in names:
        if name == FROZEN:
            transforms[name] = optax.set_to_zero()
        elif name == DEFAULT:
            transforms[name] = adam(1.0)
        else:
            transforms[name] = adam(float(name.removeprefix("lr*")))
    return optax.chain(*head, optax.multi_transform(transforms, labels)), schedule


def ema_update(ema: Any, params: Any, decay: float | jax.Array) -> Any:
    """ema <- decay * ema + (1 - decay) * params, in float32 (ml-mdm's ModelEma, from step 0)."""
    d = jnp.asarray(decay, jnp.float32)
    return jax.tree.map(lambda e, p: e * d + (1.0 - d) * p.astype(e.dtype), ema, params)
