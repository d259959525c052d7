"""Functional diffusion core: schedules, forward process, joint multi-resolution loss, sampler, parity checks."""

from mdm_jax.diffusion.loss import draw_time_and_noise, loss_fn, loss_terms
from mdm_jax.diffusion.process import build_pyramid, downsample, q_sample
from mdm_jax.diffusion.sampler import sample, threshold, update_step
from mdm_jax.diffusion.schedules import gamma_table, sampling_timesteps, shift_gammas, vdm_loss_weights
from mdm_jax.diffusion.spec import DiffusionSpec

__all__ = [
    "DiffusionSpec",
    "build_pyramid",
    "downsample",
    "draw_time_and_noise",
    "gamma_table",
    "loss_fn",
    "loss_terms",
    "q_sample",
    "sample",
    "sampling_timesteps",
    "shift_gammas",
    "threshold",
    "update_step",
    "vdm_loss_weights",
]
