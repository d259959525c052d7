r"""Train-step speed and memory: forward, joint loss, backward, clipped Adam and EMA, the real jitted step.

Prints compile time, step time (median of N after warm-up), achieved GFLOP/s (XLA's cost analysis of the
compiled step divided by the step time), XLA's memory analysis of the step (arguments = params + Adam moments +
EMA; temp = gradients + activations) and the peak RSS of the process (compilation happens first, from shapes).
Each configuration should run in its own process (peak RSS is per process); ``--xla_flags_sweep`` does that for
several XLA_FLAGS settings in turn.

Findings on the 2-core CPU machines (see the report in the commit log / README of mdm_jax/training):
* XLA:CPU drops ``optimization_barrier`` before CSE, so ``jax.checkpoint``/``nn.remat`` recomputation is merged
  back into the forward pass: ``--remat`` saves no memory on CPU (it does on GPU/TPU).
* fp32 Adam + EMA + gradients of S64 (461M params) alone take 5 x 1.72 GiB = 8.6 GiB.
* XLA_FLAGS (A/B alternated, fp32): XLA's default (YNNPACK fusions on) is best for S64 (14.4 s/step at batch 1 vs
  15.6 with ``ynn_fusion_type=dot`` and 19.6 with YNN fusions off); for the tiny p2 model
  ``--xla_cpu_experimental_ynn_fusion_type=dot`` is ~25% faster (0.22-0.30 s vs 0.35 s at batch 8). xnnpack,
  oneDNN and the legacy runtime were no better. Keep the default for real models.

  python benchmarks/bench_train.py --model=p2 --batch=8
  python benchmarks/bench_train.py --model=S64 --batch=1
  python benchmarks/bench_train.py --model=S64 --batch=4 --remat
  python benchmarks/bench_train.py --model=p2 --batch=8 --xla_flags_sweep
  python benchmarks/bench_train.py --model=configs/demo.py --batch=16     # phase models of a config
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import resource
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PARITY = os.path.join(os.environ.get("MDM_PARITY_DIR", os.path.join(REPO, "..", "shared", "parity")), "configs.json")
SWEEP = {
    "default": "",
    "xnnpack": "--xla_cpu_use_xnnpack=true",
    "no-thunks": "--xla_cpu_use_thunk_runtime=false",
    "onednn": "--xla_cpu_use_onednn=true",
    "no-ynn-fusions": "--xla_cpu_experimental_ynn_fusion_type=",
    "ynn-dot-only": "--xla_cpu_experimental_ynn_fusion_type=dot",
    "ynn-no-eltwise": "--xla_cpu_experimental_ynn_fusion_type=-eltwise",
    "ynn-no-reduce": "--xla_cpu_experimental_ynn_fusion_type=-reduce",
    "no-ynn+xnnpack": "--xla_cpu_experimental_ynn_fusion_type= --xla_cpu_use_xnnpack=true",
    "llvm-O1": "--xla_backend_optimization_level=1",
    "llvm-O0": "--xla_backend_optimization_level=0",
    "O1+ynn-dot": "--xla_backend_optimization_level=1 --xla_cpu_experimental_ynn_fusion_type=dot",
    "mem-sched": "--xla_cpu_scheduler_type=CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED",
    "no-concurrency-sched": "--xla_cpu_enable_concurrency_optimized_scheduler=false",
}


def _rss_gb(field: str = "VmRSS") -> float:
    """Resident memory (``VmRSS``) or its peak (``VmHWM``) from /proc, in GiB (NaN off Linux)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return round(int(line.split()[1]) / 2**20, 2)
    except OSError:
        pass
    return float("nan")


def _reset_peak_rss() -> bool:
    """Restart the kernel's peak-RSS count (``VmHWM``) from the current RSS (Linux: ``/proc/self/clear_refs``)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _model_and_diffusion(name: str, parity_path: str):
    """(model config, diffusion overrides, text length, text width) for a named model."""
    import ml_collections

    from mdm_jax.models.architectures import get_architecture

    if name in ("p1", "p2"):
        with open(parity_path) as f:
            entry = json.load(f)["models"][name]
        model = ml_collections.ConfigDict(entry["unet_config"])
        model.resolution = int(entry["derived"]["resolutions"][0])  # 32 for p2 (the converter's convention)
        diffusion = dict(entry["diffusion_config"].get("sampler_config", {}))
        for k in ("use_double_loss", "use_vdm_loss_weights", "multi_res_weights", "mixed_ratio"):
            diffusion[k] = entry["diffusion_config"].get(k)
        return model, diffusion, int(entry["unet_fixture"]["tokens"]), int(model.conditioning_feature_dim)
    model = get_architecture(name)  # S64, S64S256, ...: text width 2048 (FLAN-T5-XL), 128 tokens
    return model, {}, 128, 2048


def _config_phase(spec: str, phase_name: str, batch: int):
    """(config with one phase, text length, text width) for ``configs/x.py[:arg]``: the named (default: last)
    phase of the config at ``batch``, with the config's optimiser and diffusion settings."""
    from mdm_jax.training import config_lib

    path = spec.partition(":")[0]
    cfg = config_lib.load(spec if os.path.isabs(path) else os.path.join(REPO, spec))
    names = [str(p.name) for p in cfg.phases]
    if phase_name and phase_name not in names:
        raise SystemExit(f"--phase: {phase_name!r} is not a phase of {path} (phases: {names})")
    phase = cfg.phases[names.index(phase_name) if phase_name else -1]
    phase.batch_size, phase.steps = batch, 1
    phase.init_from = None
    cfg.phases = [phase]
    text = cfg.data.get("text", None)
    tokens = int(text.max_length) if text is not None and "max_length" in text else 128
    return cfg, tokens, int(cfg.model.get("cond_dim", -1))


def synthetic_batch(batch: int, resolution: int, tokens: int, width: int, uses_text: bool = True,
                    num_classes: int = 0, seed: int = 0) -> dict:
    """Random images in [-1, 1] (NHWC) plus text features whose row i has ``tokens - i % tokens`` real tokens."""
    import numpy as np

    rng = np.random.default_rng(seed)
    out = {"images": rng.uniform(-1, 1, (batch, resolution, resolution, 3)).astype(np.float32)}
    if uses_text:
        mask = np.zeros((batch, tokens), np.float32)
        for i in range(batch):
            mask[i, : max(1, tokens - i % tokens)] = 1.0
        out["lm_outputs"] = rng.normal(size=(batch, tokens, width)).astype(np.float32) * mask[..., None]
        out["lm_mask"] = mask
    if num_classes:
        out["labels"] = np.zeros((batch,), np.int32)
    return out


def build_step(args: argparse.Namespace) -> dict:
    """The compiled train step, its batch, a state factory and XLA's cost/memory analysis (nothing run yet)."""
    from absl import flags

    flags.FLAGS.mark_as_parsed()
    import jax

    if args.cache:
        jax.config.update("jax_compilation_cache_dir", args.cache)
    from mdm_jax.training import config_lib, host_memory, model_fn, optimizer, phases, train_step
    from mdm_jax.training import state as state_lib

    if ".py" in args.model:  # a config file: its last phase (or --phase), its diffusion settings
        cfg, tokens, width = _config_phase(args.model, args.phase, args.batch)
    else:
        model_cfg, diffusion, tokens, width = _model_and_diffusion(args.model, args.parity)
        cfg = config_lib.base_config()
        if diffusion:  # ml-mdm field names are understood by DiffusionSpec.from_config
            cfg.diffusion = config_lib.ConfigDict(
                {k: v for k, v in diffusion.items() if k not in ("multi_res_weights", "mixed_ratio")})
        cfg.phases = [config_lib.phase("bench", model=model_cfg, batch_size=args.batch, steps=1,
                                       multi_res_weights=diffusion.get("multi_res_weights"),
                                       mixed_ratio=diffusion.get("mixed_ratio"))]
    if getattr(args, "grad_accum", 0):
        cfg.phases[0].grad_accum_steps = int(args.grad_accum)
    cfg.model.dtype = args.dtype
    cfg.optimizer.mu_dtype = args.mu_dtype
    phase = phases.build_phases(cfg)[0]
    model = model_fn.build(phase.model_config, dtype=args.dtype, remat=args.remat)
    batch = synthetic_batch(args.batch, phase.spec.resolution, tokens, width, phase.spec.uses_text,
                            phase.spec.innermost.num_classes)

    # Compile first, from shapes only (XLA's compile memory is not counted on top of the state), then create
    # the state the way the trainer does: params, Adam moments and EMA in one jitted init.
    abstract_params = jax.eval_shape(lambda k: model.init(k, batch), jax.random.key(0))
    labels = optimizer.param_labels(abstract_params)
    tx, sched = optimizer.make_optimizer(cfg.optimizer, labels)
    abstract = state_lib.abstract_state(abstract_params, tx)
    step = jax.jit(train_step.make_step_fn(model, phase, tx, sched, labels, ema_decay=0.9999, seed=0),
                   donate_argnums=(0,),
                   compiler_options=train_step.step_compiler_options(getattr(args, "memory_scheduler", False)))
    batch = jax.device_put(batch)
    t0 = time.perf_counter()
    compiled = step.lower(abstract, batch, {}).compile()
    compile_s = time.perf_counter() - t0
    jax.clear_caches()  # as the trainer does after compiling
    host_memory.release_freed_heap()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    mem = compiled.memory_analysis()
    mem_gb = {k: round(getattr(mem, f"{k}_size_in_bytes", 0) / 2**30, 2)
              for k in ("argument", "output", "alias", "temp")} if mem is not None else {}
    return {"compiled": compiled, "batch": batch, "compile_s": compile_s, "xla_memory_gb": mem_gb,
            "grad_accum": int(phase.grad_accum_steps),
            "flops": float(cost.get("flops", float("nan"))),
            "init_state": functools.partial(
                _init_state, jax.jit(lambda k: state_lib.init_state(model.init(k, batch), tx)))}


def _init_state(init, key):
    """The state, then the init's executable dropped and the freed heap handed back, as in the trainer (it creates
    its state, compiles the step, then clears JAX's caches and trims: the init's executable is 0.16 GiB for S64)."""
    import jax

    from mdm_jax.training import host_memory

    state = jax.block_until_ready(init(key))
    jax.clear_caches()
    host_memory.release_freed_heap()
    return state


def run_one(args: argparse.Namespace) -> dict:
    import jax
    import numpy as np

    built = build_step(args)
    compiled, batch, flops = built["compiled"], built["batch"], built["flops"]
    rss_after_compile = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    rss_now_after_compile = _rss_gb()
    if args.compile_only:
        return {"model": args.model, "batch": args.batch, "remat": args.remat,
                "compile_s": round(built["compile_s"], 1), "gflop_per_step": round(flops / 1e9, 2),
                "xla_memory_gb": built["xla_memory_gb"]}
    state = built["init_state"](jax.random.key(0))
    jax.block_until_ready(state)
    peak_rss_init = _rss_gb("VmHWM")
    for _ in range(args.warmup):
        state, _ = compiled(state, batch, {})
    jax.block_until_ready(state)
    rss_before_steps = _rss_gb()
    peak_before_steps = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    reset = _reset_peak_rss()  # also restarts ru_maxrss: the whole run's peak is the larger of the two
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        state, metrics = compiled(state, batch, {})
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - t0)
    step_s = float(np.median(times))
    n_params = sum(x.size for x in jax.tree.leaves(state.params))
    return {
        "model": args.model, "batch": args.batch, "dtype": args.dtype, "remat": args.remat,
        "mu_dtype": args.mu_dtype or "float32", "grad_accum": built["grad_accum"],
        "memory_scheduler": bool(args.memory_scheduler),
        "xla_flags": os.environ.get("XLA_FLAGS", ""), "params": int(n_params),
        "compile_s": round(built["compile_s"], 1),
        "step_s_median": round(step_s, 4), "step_s_min": round(min(times), 4), "steps_timed": len(times),
        "gflop_per_step": round(flops / 1e9, 2), "gflops_per_s": round(flops / step_s / 1e9, 1),
        "peak_rss_gb": round(max(peak_before_steps, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20), 2),
        "peak_rss_gb_after_compile": round(rss_after_compile, 2), "rss_gb_after_compile": rss_now_after_compile,
        "peak_rss_gb_after_init": peak_rss_init, "rss_gb_before_timed_steps": rss_before_steps,
        "peak_rss_gb_timed_steps": _rss_gb("VmHWM") if reset else None, "xla_memory_gb": built["xla_memory_gb"],
        "loss": float(metrics["loss"]),
    }


def _sweep_names(value: str) -> list[str]:
    return list(SWEEP) if value == "all" else value.split(",")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="p2", help="p1 | p2 (parity fixture models) | S64 | S64S256 | ...")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--phase", default="", help="with a config file as --model: the phase to time (default: last)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--remat", action="store_true", help="rematerialise ResNet/attention layers in the backward")
    p.add_argument("--grad_accum", type=int, default=0,
                   help="micro-batches per step (gradient accumulation; 0 = the config's, else 1)")
    p.add_argument("--memory_scheduler", action="store_true",
                   help="XLA:CPU's memory-optimised scheduler for the step (config cpu_memory_scheduler)")
    p.add_argument("--mu_dtype", default="", help="Adam first-moment dtype ('' = float32, 'bfloat16' saves memory)")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--parity", default=PARITY,
                   help="parity fixtures' configs.json (default $MDM_PARITY_DIR or ../shared/parity next to the repo)")
    p.add_argument("--compile_only", action="store_true", help="report XLA's cost and memory analysis only")
    p.add_argument("--cache", default="", help="persistent compilation cache dir ('' = off)")
    p.add_argument("--xla_flags_sweep", nargs="?", const="all", default="",
                   help="one subprocess per XLA_FLAGS setting: 'all' or comma-separated names of SWEEP")
    args = p.parse_args()
    sys.path.insert(0, REPO)
    if not args.xla_flags_sweep:
        print(json.dumps(run_one(args)), flush=True)
        return
    argv = [a for a in sys.argv[1:] if not a.startswith("--xla_flags_sweep")]
    for name in _sweep_names(args.xla_flags_sweep):
        env = dict(os.environ, XLA_FLAGS=SWEEP[name])
        out = subprocess.run([sys.executable, os.path.abspath(__file__), *argv], env=env, capture_output=True,
                             text=True)
        line = out.stdout.strip().splitlines()[-1] if out.returncode == 0 else out.stderr.strip()[-500:]
        print(f"{name:24s} {line}", flush=True)


if __name__ == "__main__":
    main()
