"""Noise schedules (gamma = alpha-bar tables), per-level log-SNR shift, sampling timestep lists.

Everything here runs on the host in NumPy: tables are tiny and built once, and computing them exactly the way
ml-mdm does (float64 construction, float32 cast, float32 shift arithmetic) is what makes them match its tables
bit for bit. Device code only ever indexes the resulting float32 arrays.

Conventions: a table has ``T + 1`` entries with ``gamma[0] == 1``; training time ``time`` in ``0..T-1`` uses
``gamma[time + 1]``; sampling steps go between table indices ``t -> s``; the network's time input is always the
table index minus one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

SCHEDULE_TYPES = ("deepfloyd", "cosine", "ddpm")


# ----------------------------------------------------------------------------------------------------------------
# Discrete gamma tables (float64 construction, as ml-mdm does it)
# ----------------------------------------------------------------------------------------------------------------


def squaredcos_cap_v2_f64(num_steps: int = 1000) -> np.ndarray:
    """DEEPFLOYD table in float64: squared-cosine alpha-bar, betas capped at 0.999, beta=0 prepended.

    Uses Python ``math`` scalars for alpha-bar like the original so the float64 values are identical.
    """

    def alpha_bar(tau: float) -> float:
        return math.cos((tau + 0.008) / 1.008 * math.pi / 2) ** 2

    betas = [0.0]
    for i in range(num_steps):
        betas.append(min(1 - alpha_bar((i + 1) / num_steps) / alpha_bar(i / num_steps), 0.999))
    return np.exp(np.cumsum(np.log(1.0 - np.asarray(betas))))


def cosine_logsnr_f64(num_steps: int = 1000, logsnr_min: float = -5.0, logsnr_max: float = 5.0) -> np.ndarray:
    """COSINE table in float64: log-SNR from ``logsnr_max`` to ``logsnr_min`` on ``linspace(0, 1, T)``, 1 prepended."""
    t = np.linspace(0.0, 1.0, num=num_steps)
    b = np.arctan(np.exp(-0.5 * logsnr_max))
    a = np.arctan(np.exp(-0.5 * logsnr_min)) - b
    logsnr = -2.0 * np.log(np.tan(a * t + b))
    gammas = 1 / (1 + np.exp(-logsnr))
    return np.concatenate(([1.0], gammas))


def ddpm_linear_f64(num_steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> np.ndarray:
    """DDPM table in float64: linear betas from ``beta_start`` to ``beta_end``, beta=0 prepended."""
    betas = np.concatenate(([0.0], np.linspace(beta_start, beta_end, num=num_steps)))
    return np.exp(np.cumsum(np.log(1.0 - betas)))


def gamma_table_f64(
    schedule_type: str,
    num_steps: int = 1000,
    *,
    beta_start: float = 1e-4,
    beta_end: float = 0.02,
    logsnr_min: float = -5.0,
    logsnr_max: float = 5.0,
) -> np.ndarray:
    """The float64 gamma table (length ``num_steps + 1``) for ``schedule_type`` in SCHEDULE_TYPES."""
    if schedule_type == "deepfloyd":
        return squaredcos_cap_v2_f64(num_steps)
    if schedule_type == "cosine":
        return cosine_logsnr_f64(num_steps, logsnr_min, logsnr_max)
    if schedule_type == "ddpm":
        return ddpm_linear_f64(num_steps, beta_start, beta_end)
    raise ValueError(f"schedule_type must be one of {SCHEDULE_TYPES}, got {schedule_type!r}")


def shift_gammas(gammas: np.ndarray, scale: float, power: float = 1.0) -> np.ndarray:
    """Shift a float32 gamma table to a lower log-SNR: ``SNR' = SNR / scale**power`` (log-SNR - p*ln(scale)).

    Done in float32 in ml-mdm's operation order (``1 / (1 + 1 / (g / (1 - g) / s**p))``). A scale <= 1 returns
    the input unchanged, so the unshifted level is bitwise the plain table and index 0 stays exactly 1.
    """
    g = np.asarray(gammas, dtype=np.float32)
    if scale is None or scale <= 1:
        return g.copy()
    factor = np.float32(scale**power)
    with np.errstate(divide="ignore"):
        snr = g / (np.float32(1) - g)  # inf at g == 1 -> shifted value exactly 1
        scaled = snr / factor
        out = np.float32(1) / (np.float32(1) + np.float32(1) / scaled)
    return out.astype(np.float32)


def gamma_table(
    schedule_type: str,
    num_steps: int = 1000,
    *,
    beta_start: float = 1e-4,
    beta_end: float = 0.02,
    logsnr_min: float = -5.0,
    logsnr_max: float = 5.0,
    rescale_schedule: float = 1.0,
    shift_power: float = 1.0,
) -> np.ndarray:
    """The float32 gamma table ml-mdm uses: float64 build, float32 cast, optional global ``rescale_schedule`` shift.

    ml-mdm applies ``rescale_schedule`` (only when > 1) with the same ``schedule_shifted_power``.
    """
    g64 = gamma_table_f64(
        schedule_type,
        num_steps,
        beta_start=beta_start,
        beta_end=beta_end,
        logsnr_min=logsnr_min,
        logsnr_max=logsnr_max,
    )
    return shift_gammas(g64.astype(np.float32), rescale_schedule, shift_power)


def vdm_loss_weights(gammas: np.ndarray) -> np.ndarray:
    """VDM loss weights ``SNR[t-1]/SNR[t] - 1`` for the table (float32, ml-mdm order), indexed at ``time + 1``.

    Computed for table indices 2..T and padded in front with two copies of the first value.
    """
    gam = np.asarray(gammas, dtype=np.float32)
    g, g_last = gam[2:], gam[1:-1]
    one = np.float32(1)
    w = g_last * (one - g) / (one - g_last) / g - one
    return np.concatenate([w[:1], w[:1], w]).astype(np.float32)


def level_gamma_tables(gammas: np.ndarray, scales: Sequence[float], power: float, shifted: bool) -> np.ndarray:
    """Per-level tables, shape (levels, T+1), rows high -> low resolution; each row shifted by its level's scale."""
    if not shifted:
        return np.stack([np.asarray(gammas, np.float32)] * len(scales))
    return np.stack([shift_gammas(gammas, s, power) for s in scales])


# ----------------------------------------------------------------------------------------------------------------
# Sampling timestep lists
# ----------------------------------------------------------------------------------------------------------------


def sampling_timesteps(num_inference_steps: int, num_diffusion_steps: int = 1000) -> np.ndarray:
    """Descending table indices ``round(arange(n+1) * (T+1)/(n+1))`` (half-to-even), ending at 0; int32.

    ``num_inference_steps == num_diffusion_steps`` gives T, T-1, ..., 0 (ml-mdm's ``resample_steps=False`` path).
    """
    n = int(num_inference_steps)
    if n < 1:
        raise ValueError(f"num_inference_steps must be >= 1, got {n}")
    ratio = (num_diffusion_steps + 1) / (n + 1)
    ts = (np.arange(0, n + 1) * ratio).round()[::-1]
    return ts.astype(np.int32)


# ----------------------------------------------------------------------------------------------------------------
# Continuous-time helpers (extras; not used by the ml-mdm-compatible path)
# ----------------------------------------------------------------------------------------------------------------


def continuous_gamma(
    tau: jax.Array | float,
    schedule_type: str = "deepfloyd",
    *,
    logsnr_min: float = -5.0,
    logsnr_max: float = 5.0,
    shift_logsnr: float = 0.0,
) -> jax.Array:
    """Continuous-time gamma(tau) for tau in [0, 1], optionally shifted to log-SNR - ``shift_logsnr``.

    'deepfloyd': cos^2(((tau + 0.008)/1.008) pi/2) normalised to 1 at tau=0 (no beta cap); 'cosine': sigmoid of
    the interpolated log-SNR. Differentiable; meant for continuous-time experiments, not for ml-mdm parity.
    """
    tau = jnp.asarray(tau, jnp.float32)
    if schedule_type == "deepfloyd":
        g0 = math.cos(0.008 / 1.008 * math.pi / 2) ** 2
        g = jnp.clip(jnp.cos((tau + 0.008) / 1.008 * jnp.pi / 2) ** 2 / g0, 1e-12, 1 - 1e-7)
        logsnr = jnp.log(g) - jnp.log1p(-g)
    elif schedule_type == "cosine":
        b = math.atan(math.exp(-0.5 * logsnr_max))
        a = math.atan(math.exp(-0.5 * logsnr_min)) - b
        logsnr = -2.0 * jnp.log(jnp.tan(a * tau + b))
    else:
        raise ValueError(f"continuous_gamma supports 'deepfloyd' and 'cosine', got {schedule_type!r}")
    return jax.nn.sigmoid(logsnr - shift_logsnr)
