"""``train_and_evaluate(config, workdir)``: the whole progressive run, resumable at any step.

Flow: resume from the newest readable checkpoint of the workdir (or start phase ``init.phase`` from
``init.checkpoint``, or from scratch) -> train the phase (sharded jitted steps, async checkpoints, metrics,
sample grids) -> save the phase's final checkpoint -> grow the next phase's model out of it -> ... .
A SIGTERM on any host (or a preemption notice) makes every host save the same step and return
(``training/stop.py``); a NaN/inf loss raises.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Mapping
from typing import Any

import jax
import ml_collections
import numpy as np
import optax
from absl import logging

from mdm_jax import data as data_lib
from mdm_jax import io_paths
from mdm_jax.evaluation import prompt_following, video_score
from mdm_jax.training import checkpoint as ckpt_lib
from mdm_jax.training import host_memory, model_fn, partitioning, reporting, run_info, sampling, sources, wallclock
from mdm_jax.training import phases as phases_lib
from mdm_jax.training import state as state_lib
from mdm_jax.training.optimizer import make_optimizer, param_labels
from mdm_jax.training.stop import StopCoordinator
from mdm_jax.training.train_step import jit_step, make_step_fn, step_compiler_options

BATCH_KEYS = ("images", "labels", "lm_outputs", "lm_mask", "tokens")


@dataclasses.dataclass
class PhaseRun:
    """Everything one phase needs at run time."""

    phase: phases_lib.Phase
    model: model_fn.Model
    tx: optax.GradientTransformation
    schedule: optax.Schedule
    labels: Any
    shardings: state_lib.TrainState
    abstract: state_lib.TrainState
    data: Any
    info: Any
    example: dict[str, np.ndarray]
    step_fn: Any
    frozen: Any = dataclasses.field(default_factory=dict)  # frozen text encoder weights (on device)
    compiled: Any = None
    flops: float = float("nan")

    def init_params(self, key: jax.Array) -> Any:
        return self.model.init(key, self.example)


def example_batch(info: Any, per_host: int) -> dict[str, np.ndarray]:
    """Zeros shaped like one per-host batch (from ``DataInfo``; consumes nothing from the iterator)."""
    r = int(info.resolution)
    batch = {"images": np.zeros((per_host, r, r, 3), np.float32)}
    if info.conditioning == "class":
        batch["labels"] = np.zeros((per_host,), np.int32)
    elif info.conditioning == "text":
        if info.lm_dim:
            batch["lm_outputs"] = np.zeros((per_host, info.max_length, info.lm_dim), np.float32)
        else:
            batch["tokens"] = np.zeros((per_host, info.max_length), np.int32)
        batch["lm_mask"] = np.zeros((per_host, info.max_length), np.float32)
    return batch


def check_compatible(phase: phases_lib.Phase, info: Any, model: model_fn.Model) -> None:
    """Fail early, naming the fields, when model and data disagree about conditioning."""
    inner = phase.spec.innermost
    name = f"phase '{phase.name}'"
    if info.conditioning == "class":
        if inner.num_classes != info.num_classes:
            raise ValueError(f"{name}: data '{info.name}' has {info.num_classes} classes but the model's "
                             f"num_classes is {inner.num_classes} (set config.model.num_classes)")
    elif info.conditioning == "text":
        width = info.lm_dim if info.lm_dim else (getattr(model.text, "dim", None) or model.frozen_dim or None)
        if info.lm_dim is None and model.text is None and model.frozen_text is None:
            raise ValueError(f"{name}: data emits tokens but config.text_encoder is None")
        if inner.input_cond_dim <= 0:
            raise ValueError(f"{name}: data is text-conditioned but the model has no text input "
                             "(config.model.cond_dim / conditioning_feature_dim)")
        if width is not None and int(width) != inner.input_cond_dim:
            raise ValueError(f"{name}: text features are {width}-d but the model expects "
                             f"conditioning_feature_dim={inner.input_cond_dim}")
    elif inner.input_cond_dim > 0 or inner.num_classes:
        raise ValueError(f"{name}: the model is conditional but data '{info.name}' has no conditioning")


def text_setup(config: ml_collections.ConfigDict, info: Any, mesh: jax.sharding.Mesh,
               cache: dict[str, Any] | None = None) -> tuple[model_fn.TextSetup, Any, Any]:
    """(text setup, frozen weights on device, their shardings); a frozen encoder is loaded once per run."""
    cfg = config.get("text_encoder")
    key = json.dumps(cfg.to_dict() if cfg else None, sort_keys=True)
    if cache is not None and key in cache:
        return cache[key]
    text = model_fn.build_text_encoder(cfg, info, config.model.dtype)
    frozen, shardings = {}, {}
    if text.frozen is not None:
        shardings = jax.tree.map(lambda spec: jax.sharding.NamedSharding(mesh, spec), text.frozen_specs)
        frozen = jax.device_put(text.frozen_params, shardings)
        text.frozen_params = None  # the host copy is no longer needed
    out = (text, frozen, shardings)
    if cache is not None and text.frozen is not None:
        cache[key] = out
    return out


def setup_phase(config: ml_collections.ConfigDict, phase: phases_lib.Phase, mesh: jax.sharding.Mesh,
                text_cache: dict[str, Any] | None = None) -> PhaseRun:
    partitioning.check_batch_size(phase.batch_size, mesh, phase.grad_accum_steps)
    data, info = data_lib.create_dataset(phase.data_config, global_batch_size=phase.batch_size,
                                         seed=int(config.seed), split="train")
    text, frozen, frozen_shardings = text_setup(config, info, mesh, text_cache)
    model = model_fn.build(phase.model_config, dtype=config.model.dtype, remat=bool(config.model.remat),
                           text=text)
    check_compatible(phase, info, model)
    example = example_batch(info, info.per_host_batch_size)
    abstract_params = jax.eval_shape(lambda k: model.init(k, example), jax.random.key(0))
    labels = param_labels(abstract_params, phase.freeze, phase.lr_multipliers)
    tx, schedule = make_optimizer(config.optimizer, labels, phase.steps)
    run = PhaseRun(phase, model, tx, schedule, labels, None, None, data, info, example, None, frozen)
    abstract = state_lib.abstract_state(abstract_params, tx)
    run.shardings = state_lib.state_shardings(abstract, mesh, int(config.sharding.min_size))
    run.abstract = state_lib.abstract_state(abstract_params, tx, run.shardings)
    step_fn = make_step_fn(model, phase, tx, schedule, labels, ema_decay=float(config.optimizer.ema_decay),
                           seed=int(config.seed), ema_warmup=bool(config.optimizer.get("ema_warmup", True)))
    run.step_fn = jit_step(step_fn, run.shardings, example, mesh, frozen_shardings,
                           step_compiler_options(bool(config.get("cpu_memory_scheduler", False))))
    return run


def fresh_state(config: ml_collections.ConfigDict, run: PhaseRun, mesh: jax.sharding.Mesh) -> state_lib.TrainState:
    key = jax.random.fold_in(jax.random.key(int(config.seed)), 1_000 + run.phase.index)
    return state_lib.create_sharded(run.init_params, run.tx, key, run.shardings, step=run.phase.start_step)


def grow(state: state_lib.TrainState, run: PhaseRun, params: Any, ema: Any, rules: Mapping[str, str],
         what: str) -> state_lib.TrainState:
    """Fill ``rules``' subtrees of a fresh state from ``params``/``ema`` and print what came from where."""
    new_params, report = phases_lib.transplant(state.params, params, rules)
    new_ema, _ = phases_lib.transplant(state.ema, ema, rules)
    logging.info("Initialising %s from %s (%s):\n%s", run.phase.describe(), what,
                 ", ".join(f"{d or '<all>'} <- {s or '<all>'}" for d, s in rules.items()), report.summary())
    return state.replace(params=state_lib.place(new_params, run.shardings.params),
                         ema=state_lib.place(new_ema, run.shardings.ema))


def _config_json(config: ml_collections.ConfigDict) -> dict[str, Any]:
    return json.loads(config.to_json_best_effort())


def _host_batch(it: Any) -> dict[str, np.ndarray]:
    batch = next(it)
    return {k: v for k, v in batch.items() if k in BATCH_KEYS}


def _cost_flops(compiled: Any) -> float:
    try:
        cost = compiled.cost_analysis()
        if isinstance(cost, (list, tuple)):
            cost = cost[0]
        return float(cost.get("flops", float("nan")))
    except Exception:  # noqa: BLE001 - cost analysis is informative only
        return float("nan")


class Trainer:
    """The loop's state: phases, mesh, checkpointer, writer, progress. ``run()`` does the work."""

    def __init__(self, config: ml_collections.ConfigDict, workdir: str):
        self.config = config
        self.workdir = io_paths.resolve(workdir)  # local or gs://...: every file below goes through epath
        reporting.quiet_library_logs(not config.get("verbose_library_logs", False))
        self.phases = phases_lib.build_phases(config)
        self.total_steps = self.phases[-1].end_step
        if int(config.get("max_steps", -1)) > 0:
            self.total_steps = min(self.total_steps, int(config.max_steps))
        self.mesh = partitioning.make_mesh(config.mesh)
        self.ckpt = ckpt_lib.Checkpointer(io_paths.join(self.workdir, "checkpoints"), keep=int(config.checkpoint.keep),
                                          async_save=bool(config.checkpoint.async_save),
                                          keep_steps=[p.end_step for p in self.phases])
        self.writer = reporting.MetricWriter(io_paths.join(self.workdir, "tensorboard"))
        self.history: list[tuple[int, dict[str, float]]] = []
        self.stop = StopCoordinator(int(config.get("stop_check_every_steps", 10)))
        self.progress: reporting.Progress | None = None
        self._sample_batches: dict[int, Any] = {}
        self._text_cache: dict[str, Any] = {}
        self._evaluator: Any = None
        self.clock = wallclock.WallClock()

    # ---- starting point ------------------------------------------------------------------------------------
    def _restore(self, step: int) -> tuple[PhaseRun, state_lib.TrainState]:
        meta = self.ckpt.restore_meta(step)
        idx = int(meta["phase"])
        if idx >= len(self.phases) or self.phases[idx].name != meta.get("phase_name"):
            raise ValueError(f"checkpoint phase {idx} '{meta.get('phase_name')}' is not in this config's phases "
                             f"{[p.name for p in self.phases]}")
        run = setup_phase(self.config, self.phases[idx], self.mesh, self._text_cache)
        items, ema = run.abstract.checkpoint_items()
        mid_phase = step < run.phase.end_step
        with_data = mid_phase and self.ckpt.has_data(step)
        if mid_phase and not with_data:  # a final checkpoint written before they kept the data iterator
            logging.warning("Checkpoint %d ended phase '%s' and holds no data-iterator state; the phase now runs "
                            "to step %d, so its data stream restarts from the phase's first batch",
                            step, run.phase.name, run.phase.end_step)
        restored = self.ckpt.restore(step, abstract_state=items, abstract_ema=ema,
                                     data_iterator=run.data if with_data else None)
        state = state_lib.TrainState.from_items(restored["state"], restored["ema"])
        if int(state.step) != step:
            raise ValueError(f"checkpoint {step} holds a state at step {int(state.step)}")
        return run, state

    def starting_point(self) -> tuple[PhaseRun, state_lib.TrainState]:
        resumed = self.ckpt.restore_latest(self._restore)
        if resumed is not None:
            step, (run, state) = resumed
            logging.info("Resumed from checkpoint %s (step %d, %s)", self.ckpt.step_dir(step), step,
                         run.phase.describe())
            return run, state
        init = self.config.init
        k = int(init.get("phase", 0))
        if not 0 <= k < len(self.phases):
            raise ValueError(f"init.phase={k}: the config has phases 0..{len(self.phases) - 1}")
        run = setup_phase(self.config, self.phases[k], self.mesh, self._text_cache)
        state = fresh_state(self.config, run, self.mesh)
        if init.get("checkpoint"):
            src = sources.load(init.checkpoint, step=int(init.get("step", -1)))
            rules = run.phase.init_from or {"": ""}
            state = grow(state, run, src.params, src.ema, rules, src.description)
        elif k > 0:
            raise ValueError(f"init.phase={k} needs init.checkpoint (the weights phase {k} grows from)")
        else:
            logging.info("Starting from scratch: %s", run.phase.describe())
        return run, state

    def next_phase(self, run: PhaseRun, state: state_lib.TrainState) -> tuple[PhaseRun, state_lib.TrainState]:
        """Grow the next phase's model out of the finished one (same process, arrays stay on device)."""
        nxt = self.phases[run.phase.index + 1]
        new_run = setup_phase(self.config, nxt, self.mesh, self._text_cache)
        new_state = fresh_state(self.config, new_run, self.mesh)
        if nxt.init_from:
            new_state = grow(new_state, new_run, state.params, state.ema, nxt.init_from,
                             f"the end of phase '{run.phase.name}' (step {int(state.step)})")
        else:
            logging.warning("%s has no init_from: it starts from random weights", nxt.describe())
        return new_run, new_state

    # ---- actions -------------------------------------------------------------------------------------------
    def save(self, run: PhaseRun, state: state_lib.TrainState, step: int) -> None:
        if jax.process_index() == 0:  # what --mode=sample needs besides the weights (tokenizer, class names)
            run_info.save(self.workdir, run.phase.index, run.info, run.phase.data_config)
        items, ema = state.checkpoint_items()
        meta = {"phase": run.phase.index, "phase_name": run.phase.name, "step": step,
                "resolutions": list(run.phase.spec.resolutions), "time": time.time()}
        if self.ckpt.save(step, state=items, ema=ema, config=_config_json(self.config), meta=meta,
                          data_iterator=run.data):
            logging.info("Saving checkpoint %s", self.ckpt.step_dir(step))

    def _sample_batch(self, run: PhaseRun) -> Any:
        """A validation batch (with captions) to condition sample grids on, when the config gives none."""
        if run.phase.index in self._sample_batches:
            return self._sample_batches[run.phase.index]
        n = int(self.config.sample.num_images) * jax.process_count()
        try:
            _, batch = data_lib.conditioning_batch(run.phase.data_config, global_batch_size=n,
                                                   seed=int(self.config.seed))
        except data_lib.MissingDataError as e:
            logging.info("No split for sample conditioning (%s)", e)
            batch = None
        self._sample_batches[run.phase.index] = batch
        return batch

    def sample(self, run: PhaseRun, state: state_lib.TrainState, step: int) -> None:
        """Write sample grids; a failure is logged, never fatal (the checkpoint is already safe)."""
        cfg = self.config.sample
        if int(cfg.get("num_images", 0)) <= 0:
            return
        t0 = time.perf_counter()
        try:
            params = state.ema if cfg.get("use_ema", True) else state.params
            weights = sampling.weights_name(bool(cfg.get("use_ema", True)))
            text = run.info.conditioning == "text"
            needs_batch = text and (not cfg.get("prompts") or run.info.tokenizer is None)
            batch = self._sample_batch(run) if needs_batch else None
            levels, captions = sampling.generate(run.model, run.phase, params, run.info, cfg,
                                                 jax.random.key(int(cfg.get("seed", 0))), batch, frozen=run.frozen)
            sampling.write_grids(levels, captions, run.phase.spec.resolutions,
                                 io_paths.join(self.workdir, "samples", run.phase.name), step, self.writer,
                                 tiles=run.phase.spec.level_tiles, weights=weights)
            if self.config.data.get("name") == "moving_shapes":
                video_score.score_and_report(levels, captions, run.phase, step, weights, self.writer,
                                             io_paths.join(self.workdir, "samples", run.phase.name))
            if prompt_following.applies(self.config, run.info, run.phase.index, len(self.phases)):
                prompt_following.score_and_report(
                    run.model, run.phase, params, run.info, cfg, step, weights, self.writer,
                    io_paths.join(self.workdir, "samples", run.phase.name), frozen=run.frozen)
        except Exception:  # noqa: BLE001 - samples are a by-product; training goes on
            logging.exception("Sampling at step %d failed; training continues.", step)
            return
        logging.info("Sampled %d images in %.1fs", len(captions), time.perf_counter() - t0)

    def evaluate(self, run: PhaseRun, state: state_lib.TrainState, step: int) -> None:
        """Periodic eval (``config.eval``); like sampling, a failure is logged, never fatal."""
        from mdm_jax.evaluation import run as eval_run

        try:
            self._evaluator = self._evaluator or eval_run.Evaluator(self.config, self.workdir)
            params = state.ema if self._evaluator.cfg.use_ema else state.params
            self._evaluator.evaluate(run.model, run.phase, params, run.info, step, run.frozen, self.writer)
        except Exception:  # noqa: BLE001 - eval is a by-product; training goes on
            logging.exception("Eval at step %d failed; training continues.", step)

    # ---- the loop ------------------------------------------------------------------------------------------
    def compile(self, run: PhaseRun, state: state_lib.TrainState, batch: Mapping[str, Any]) -> None:
        t0 = time.perf_counter()
        run.compiled = run.step_fn.lower(state, batch, run.frozen).compile()
        # The step runs from run.compiled; JAX's trace/lowering caches of it (0.4 GiB for S64) are dead weight, and
        # the compiler's (and the state init's) freed heap would otherwise stay resident all run.
        jax.clear_caches()
        host_memory.release_freed_heap()
        run.flops = _cost_flops(run.compiled)
        logging.info("Compiled the train step of phase '%s' in %.1fs (%.3g GFLOP per step per device by XLA's "
                     "cost analysis)", run.phase.name, time.perf_counter() - t0, run.flops / 1e9)

    def log_metrics(self, step: int, run: PhaseRun, sums: dict[str, float], count: int) -> None:
        means = {k: v / count for k, v in sums.items()}
        means["steps_per_sec"] = self.progress.steps_per_sec
        if run.flops == run.flops and means["steps_per_sec"] == means["steps_per_sec"]:
            means["gflops_per_sec_per_device"] = run.flops * means["steps_per_sec"] / 1e9
        self.history.append((step, means))
        self.writer.scalars(step, {f"train/{k}": v for k, v in means.items()})
        logging.info("%s", reporting.progress_line(step, self.total_steps, run.phase.name, means, self.progress,
                                                     run.phase.spec.resolutions))

    def train_phase(self, run: PhaseRun, state: state_lib.TrainState) -> tuple[state_lib.TrainState, bool]:
        """Train until the phase (or the run) ends; returns (state, stopped early)."""
        cfg, phase = self.config, run.phase
        end = min(phase.end_step, self.total_steps)
        step = int(state.step)
        every_ckpt = int(cfg.checkpoint.every_steps)
        every_log = max(1, int(cfg.log_every_steps))
        every_sample = int(cfg.sample.get("every_steps", 0))
        every_eval = int(cfg.get("eval", {}).get("every_steps", 0))
        resolutions = phase.spec.resolutions
        sums: dict[str, float] = {}
        count = 0
        pending: tuple[int, Any] | None = None
        device_sums: Any = None  # metrics summed on device since the last host pull
        window_start, last_done = step + 1, step

        def drain(force: bool = False) -> None:
            """Add the previous step's metrics to on-device sums; pull those to the host (one transfer) only on
            log steps and the phase end, or when ``force``d before a checkpoint, sample grid or stop.

            NaN guard: the pulled sums are checked, so a non-finite loss at any step of the window stops the
            run at the next pull (naming the window's steps), and a state is never checkpointed unchecked.
            """
            nonlocal pending, sums, count, device_sums, window_start, last_done
            if pending is not None:
                last_done, metrics = pending
                pending = None
                device_sums = metrics if device_sums is None else jax.tree.map(
                    lambda a, b: a + b, device_sums, metrics)
                self.progress.step_done()
                count += 1
            log_step = last_done % every_log == 0 or last_done == end
            if device_sums is None or not (force or log_step):
                return
            host = {k: float(v) for k, v in jax.device_get(device_sums).items()}
            window = str(last_done) if last_done == window_start else f"{window_start}-{last_done}"
            reporting.check_finite(window, host, resolutions)
            device_sums, window_start = None, last_done + 1
            for k, v in host.items():
                sums[k] = sums.get(k, 0.0) + v
            if log_step:
                self.log_metrics(last_done, run, sums, count)
                sums, count = {}, 0

        def stop_here() -> tuple[state_lib.TrainState, bool]:
            drain(force=True)
            self.save(run, state, step)
            self.ckpt.wait()
            logging.warning("Stopped at step %d on request; checkpoint saved.", step)
            return state, True

        self.progress.reset_rate()
        first = True  # the first step of a phase is a check step: growth and compilation take long
        while step < end:
            # Every process polls at the same steps (functions of step and config): one decision for all hosts.
            if self.stop.poll(step, first or self.stop.is_check_step(step, every_ckpt, every_log)):
                return stop_here()
            first = False
            with self.clock.section("data"):
                batch = partitioning.global_batch(_host_batch(run.data), self.mesh)
            if run.compiled is None:
                self.progress.pause()
                with self.clock.section("compile"):
                    self.compile(run, state, batch)
                self.progress.resume()
            state, metrics = run.compiled(state, batch, run.frozen)
            self.clock.steps += 1
            drain()  # add the previous step's metrics while this one runs (pulled on log steps only)
            pending = (step + 1, metrics)
            step += 1
            boundary = step == end
            if (every_ckpt > 0 and step % every_ckpt == 0) and not boundary:
                drain(force=True)  # never checkpoint a state whose loss has not been checked
                self.progress.pause()
                with self.clock.section("checkpoint"):
                    self.save(run, state, step)
                self.progress.resume()
            if every_sample > 0 and step % every_sample == 0 and not boundary:
                drain(force=True)
                self.progress.pause()
                with self.clock.section("sample"):
                    self.sample(run, state, step)
                self.progress.resume()
            if every_eval > 0 and step % every_eval == 0:
                drain(force=True)
                self.progress.pause()
                with self.clock.section("eval"):
                    self.evaluate(run, state, step)
                self.progress.resume()
        drain(force=True)
        if self.stop.finish(step):  # before the phase-end checkpoint, samples and growth
            return stop_here()
        return state, False

    def run(self) -> state_lib.TrainState:
        with self.clock.section("setup"):
            run, state = self.starting_point()
        if jax.process_index() == 0:
            io_paths.write_text(io_paths.join(self.workdir, "config.json"), self.config.to_json_best_effort(indent=2))
        self.progress = reporting.Progress(self.total_steps, int(state.step))
        while True:
            phase = run.phase
            self._log_phase_start(run, state)
            state, stopped = self.train_phase(run, state)
            if stopped:
                break
            step = int(state.step)
            if step >= self.total_steps and step < phase.end_step:  # max_steps cut the phase short
                with self.clock.section("checkpoint"):
                    self.save(run, state, step)
                break
            # The phase's final checkpoint (kept), with the data iterator: training the phase longer later
            # (its steps raised) goes on with the same data stream as an uninterrupted longer run.
            with self.clock.section("checkpoint"):
                self.save(run, state, step)
            self.progress.pause()
            with self.clock.section("sample"):
                self.sample(run, state, step)
            if phase.index + 1 >= len(self.phases) or step >= self.total_steps:
                break
            with self.clock.section("setup"):
                run, state = self.next_phase(run, state)
        with self.clock.section("checkpoint"):
            self.ckpt.wait()
        self._report_wallclock(int(state.step))
        return state

    def _report_wallclock(self, step: int) -> None:
        """Log where this process's time went and keep it in ``WORKDIR/timing.json`` (one entry per run)."""
        logging.info("%s", self.clock.describe())
        if jax.process_index() != 0:
            return
        try:
            path = io_paths.join(self.workdir, "timing.json")
            runs = json.loads(io_paths.read_text(path)) if io_paths.exists(path) else []
            runs.append({"end_step": step, "time": time.time(), **self.clock.summary()})
            io_paths.write_text(path, json.dumps(runs, indent=1))
        except Exception:  # noqa: BLE001 - a by-product; the run's work is saved
            logging.exception("Could not write timing.json")

    def _log_phase_start(self, run: PhaseRun, state: state_lib.TrainState) -> None:
        n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state.params))
        logging.info("%s: %s parameters, mesh %s", run.phase.describe(), f"{n:,}", dict(self.mesh.shape))
        if jax.process_index() == 0:
            logging.info("Parameter overview:\n%s", reporting.parameter_overview(state.params))
            logging.info("Largest arrays and their sharding:\n%s", partitioning.describe(state.params))
        self.writer.text(int(state.step), "phase", run.phase.describe())

    def close(self) -> None:
        self.stop.close()
        self.ckpt.close()
        self.writer.close()


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> Trainer:
    """Run (or resume) the progressive training described by ``config`` in ``workdir``.

    Returns the finished ``Trainer``: ``.state`` is the final train state, ``.history`` the logged metrics.
    """
    trainer = Trainer(config, workdir)
    try:
        trainer.state = trainer.run()
    finally:
        trainer.close()
    return trainer
