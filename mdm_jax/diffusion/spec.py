"""DiffusionSpec: the frozen, hashable description of the diffusion process (schedule, levels, loss options).

It is hashable so jitted functions can take it as a static argument; the derived tables (gamma per level, VDM
weights) are NumPy arrays computed on demand on the host (cached), never fields, so hashing stays cheap.
Field names follow ml-mdm's ``SamplerConfig`` / ``NestedDiffusionConfig`` where one exists.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any

import numpy as np

from mdm_jax.diffusion import schedules

PREDICTION_TYPES = ("v", "eps", "x0")
DOWNSAMPLE_TYPES = ("box", "bilinear")
# ml-mdm enum names -> ours (PredictionType DDPM/DDIM both mean an eps-prediction).
_PRED_ALIASES = {
    "v": "v",
    "v_prediction": "v",
    "eps": "eps",
    "epsilon": "eps",
    "ddpm": "eps",
    "ddim": "eps",
    "x0": "x0",
    "x_0": "x0",
    "sample": "x0",
}
# Special values of multi_res_weights: w_r = N_0 / N_r applied to the per-level MEAN mse (see DiffusionSpec).
_PIXEL_RATIO_WEIGHTS = ("n_ratio", "N_R/N_r", "pixels")


def _parse_ratio_list(value: Any, field: str) -> tuple[float, ...] | None:
    """Accept None, 'a:b:c' strings or sequences of numbers (ml-mdm writes '16:4:1')."""
    if value is None or value == "" or value == "None":
        return None
    if isinstance(value, str):
        try:
            return tuple(float(v) for v in value.split(":"))
        except ValueError as e:
            raise ValueError(f"{field}: cannot parse {value!r} as 'a:b:...'") from e
    try:
        return tuple(float(v) for v in value)
    except TypeError as e:
        raise ValueError(f"{field}: expected a sequence of numbers or 'a:b' string, got {value!r}") from e


@dataclasses.dataclass(frozen=True)
class DiffusionSpec:
    """Static description of the (multi-resolution) diffusion process.

    Levels are ordered high -> low resolution; ``scales[l]`` is the size ratio of level l to the innermost level
    (ml-mdm's ``nest_ratio + [1]``, e.g. (16, 4, 1) for the 1024 model), so the last scale is always 1.

    Loss weighting: ml-mdm averages each level's squared error over (C, H, W) and sums levels with unit weights
    (``multi_res_weights=None``). Because a mean is the sum-of-squares divided by N_r, that default *is* the
    paper's Eq. 3 weighting omega_r/omega_R = N_R/N_r on sum-of-squares norms. ``multi_res_weights='n_ratio'``
    instead applies N_0/N_r to the per-level means (i.e. the paper's ratio read literally on mean errors, which
    weights low resolutions (N_0/N_r)^2 more per pixel than the default).
    """

    schedule_type: str = "deepfloyd"
    num_diffusion_steps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02
    logsnr_min: float = -5.0
    logsnr_max: float = 5.0
    rescale_schedule: float = 1.0
    prediction_type: str = "v"
    loss_target_type: str = "eps"
    schedule_shifted: bool = True
    schedule_shifted_power: float = 1.0
    rescale_signal: float | None = None
    scales: tuple[int, ...] = (1,)
    use_double_loss: bool = True
    multi_res_weights: tuple[float, ...] | str | None = None
    mixed_ratio: tuple[float, ...] | None = None
    use_vdm_loss_weights: bool = False
    downsample: str = "box"
    # Video: per level, whether its resolutions step over frames (the level below then holds its first frames,
    # the paper's first-frame indexing), and the mosaic tiles per side of its input (1 for an image). Empty for
    # image models.
    temporal: tuple[bool, ...] = ()
    frame_tiles: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        # Normalise spellings first (frozen: use object.__setattr__), then validate.
        def norm(name: str, value: Any) -> None:
            object.__setattr__(self, name, value)

        norm("schedule_type", str(self.schedule_type).lower().replace("ddpm_linear", "ddpm"))
        for name in ("prediction_type", "loss_target_type"):
            raw = getattr(self, name)
            key = str(raw).lower()
            if key not in _PRED_ALIASES:
                raise ValueError(f"{name} must be one of {PREDICTION_TYPES} (or an ml-mdm name), got {raw!r}")
            norm(name, _PRED_ALIASES[key])
        norm("scales", tuple(int(s) for s in self.scales))
        mrw = self.multi_res_weights
        if isinstance(mrw, str) and mrw in _PIXEL_RATIO_WEIGHTS:
            norm("multi_res_weights", "n_ratio")
        else:
            norm("multi_res_weights", _parse_ratio_list(mrw, "multi_res_weights"))
        norm("mixed_ratio", _parse_ratio_list(self.mixed_ratio, "mixed_ratio"))
        norm("downsample", str(self.downsample).lower())
        norm("temporal", tuple(bool(t) for t in (self.temporal or ())))
        norm("frame_tiles", tuple(int(t) for t in (self.frame_tiles or ())))
        self._validate()

    def _validate(self) -> None:
        if self.schedule_type not in schedules.SCHEDULE_TYPES:
            raise ValueError(f"schedule_type must be one of {schedules.SCHEDULE_TYPES}, got {self.schedule_type!r}")
        if int(self.num_diffusion_steps) < 2:
            raise ValueError(f"num_diffusion_steps must be >= 2, got {self.num_diffusion_steps}")
        if not 0 < self.beta_start < self.beta_end < 1:
            raise ValueError(f"beta_start/beta_end must satisfy 0 < beta_start < beta_end < 1, "
                             f"got {self.beta_start}, {self.beta_end}")
        if not self.logsnr_min < self.logsnr_max:
            raise ValueError(f"logsnr_min must be < logsnr_max, got {self.logsnr_min}, {self.logsnr_max}")
        if self.rescale_schedule <= 0:
            raise ValueError(f"rescale_schedule must be > 0, got {self.rescale_schedule}")
        if self.schedule_shifted_power <= 0:
            raise ValueError(f"schedule_shifted_power must be > 0, got {self.schedule_shifted_power}")
        if self.rescale_signal is not None and self.rescale_signal <= 0:
            raise ValueError(f"rescale_signal must be None or > 0, got {self.rescale_signal}")
        sc = self.scales
        if len(sc) < 1 or sc[-1] != 1 or any(s < 1 for s in sc):
            raise ValueError(f"scales must be positive ints, high -> low resolution, ending in 1; got {sc}")
        if any(a <= b or a % b for a, b in zip(sc[:-1], sc[1:], strict=True)):
            raise ValueError(f"scales must strictly decrease and each must divide the one before it; got {sc}")
        n = len(sc)
        mrw = self.multi_res_weights
        if mrw is not None:
            if not self.use_double_loss and n > 1:
                raise ValueError("multi_res_weights only makes sense with use_double_loss=True (ml-mdm asserts it)")
            if mrw != "n_ratio" and (len(mrw) != n or any(w < 0 for w in mrw)):
                raise ValueError(f"multi_res_weights needs {n} non-negative values (one per level), got {mrw}")
        if self.mixed_ratio is not None:
            if len(self.mixed_ratio) != n or any(r <= 0 for r in self.mixed_ratio):
                raise ValueError(f"mixed_ratio needs {n} positive values (one per level, high -> low), "
                                 f"got {self.mixed_ratio}")
        for name in ("temporal", "frame_tiles"):
            value = getattr(self, name)
            if value and len(value) != n:
                raise ValueError(f"{name} needs {n} values (one per level, high -> low), got {value}")
        if self.temporal and self.temporal[-1]:
            raise ValueError("temporal: the innermost level cannot be temporal (it is the single-frame image level)")
        for i, is_t in enumerate(self.temporal):
            if is_t and self.frame_tiles and self.frame_tiles[i] != sc[i]:
                raise ValueError(f"frame_tiles[{i}]: a temporal level holds scales[{i}]**2 = {sc[i] ** 2} frames "
                                 f"({sc[i]} tiles per side), got {self.frame_tiles[i]}")
        if self.downsample not in DOWNSAMPLE_TYPES:
            raise ValueError(f"downsample must be one of {DOWNSAMPLE_TYPES}, got {self.downsample!r}")

    # ------------------------------------------------------------------------------------------------------------
    # Construction from configs
    # ------------------------------------------------------------------------------------------------------------

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any] | Any) -> DiffusionSpec:
        """Build from an ml_collections ConfigDict (or any mapping), accepting ml-mdm's layout and names.

        Understood: our field names at the top level; ml-mdm's nesting (``sampler_config`` sub-dict merged in);
        ``nest_ratio`` / ``nest_ratios`` (e.g. [4] -> scales (4, 1)); enum-ish strings such as 'DEEPFLOYD',
        'V_PREDICTION', 'DDPM' (an eps target). Unknown keys raise, naming them, so typos do not pass silently.
        """
        d = _to_dict(cfg)
        sampler = d.pop("sampler_config", None)
        if sampler is not None:
            for k, v in _to_dict(sampler).items():
                d.setdefault(k, v)
        for key in ("nest_ratio", "nest_ratios"):
            if key in d:
                ratios = d.pop(key)
                if "scales" in d:
                    raise ValueError(f"give either scales or {key}, not both")
                d["scales"] = tuple(int(r) for r in (ratios or ())) + (1,)
        if d.get("loss_target_type") is None and "loss_target_type" in d:
            d["loss_target_type"] = d.get("prediction_type", "v")  # ml-mdm's default: same as prediction
        ignored = {  # ml-mdm fields with no effect on the maths here (documented, accepted for convenience)
            "reproject_signal", "threshold_function", "model_output_scale", "no_use_residual",
            "use_random_interp", "random_downsample", "average_downsample", "mid_downsample",
        }
        for k in ignored:
            d.pop(k, None)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"DiffusionSpec.from_config: unknown field(s) {unknown}; known: {sorted(names)}")
        return cls(**d)

    # ------------------------------------------------------------------------------------------------------------
    # Derived values (host NumPy, cached per spec)
    # ------------------------------------------------------------------------------------------------------------

    @property
    def num_levels(self) -> int:
        return len(self.scales)

    def gammas(self) -> np.ndarray:
        """The plain float32 gamma table (T+1,), including the global ``rescale_schedule`` shift if > 1."""
        return _gammas(self)

    def level_gammas(self) -> np.ndarray:
        """(levels, T+1) float32 tables, row l shifted by scales[l] if ``schedule_shifted`` (else all plain)."""
        return _level_gammas(self)

    def vdm_weights(self) -> np.ndarray:
        """VDM loss weights (T+1,) float32, indexed at ``time + 1``."""
        return schedules.vdm_loss_weights(self.gammas())

    def level_weights(self) -> tuple[float, ...]:
        """Per-level loss weights (high -> low); 0 for levels not trained (use_double_loss False)."""
        n = self.num_levels
        if self.multi_res_weights is None:
            w = [1.0] * n
        elif self.multi_res_weights == "n_ratio":
            w = [float((self.scales[0] // s) ** 2) for s in self.scales]
        else:
            w = list(self.multi_res_weights)
        if not self.use_double_loss:
            w = [w[0]] + [0.0] * (n - 1)
        return tuple(w)

    def signal_scales(self) -> tuple[float, ...]:
        """Per-level image divisor (ml-mdm's signal rescaling), 1 where the schedule shift is used instead.

        Single level: ``rescale_signal`` if set. Several levels: 1 when ``schedule_shifted``, else the level scale.
        """
        if self.num_levels == 1:
            return (float(self.rescale_signal) if self.rescale_signal else 1.0,)
        if self.schedule_shifted:
            return (1.0,) * self.num_levels
        return tuple(float(s) for s in self.scales)

    def mixed_fractions(self) -> tuple[float, ...] | None:
        """Cumulative, normalised mixed_ratio (ml-mdm: '2:1' -> (2/3, 1)); level l trains on the first
        ``int(frac[l] * B)`` rows."""
        if self.mixed_ratio is None:
            return None
        c = np.cumsum(np.asarray(self.mixed_ratio, dtype=np.float64))
        return tuple(float(x) for x in c / c[-1])

    def mixed_rows(self, batch_size: int) -> tuple[int, ...] | None:
        """Static number of rows used per level for a batch of ``batch_size`` (None without mixed_ratio)."""
        fr = self.mixed_fractions()
        if fr is None:
            return None
        return tuple(int(f * batch_size) for f in fr)


@functools.lru_cache(maxsize=64)
def _gammas(spec: DiffusionSpec) -> np.ndarray:
    g = schedules.gamma_table(
        spec.schedule_type,
        spec.num_diffusion_steps,
        beta_start=spec.beta_start,
        beta_end=spec.beta_end,
        logsnr_min=spec.logsnr_min,
        logsnr_max=spec.logsnr_max,
        rescale_schedule=spec.rescale_schedule,
        shift_power=spec.schedule_shifted_power,
    )
    g.setflags(write=False)
    return g


@functools.lru_cache(maxsize=64)
def _level_gammas(spec: DiffusionSpec) -> np.ndarray:
    t = schedules.level_gamma_tables(_gammas(spec), spec.scales, spec.schedule_shifted_power, spec.schedule_shifted)
    t.setflags(write=False)
    return t


def _to_dict(cfg: Any) -> dict[str, Any]:
    if hasattr(cfg, "to_dict"):
        cfg = cfg.to_dict()
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        cfg = dataclasses.asdict(cfg)
    if not isinstance(cfg, Mapping):
        raise TypeError(f"expected a ConfigDict or mapping, got {type(cfg).__name__}")
    out = {}
    for k, v in cfg.items():
        if isinstance(v, list):
            v = tuple(v)
        out[k] = v
    return out

