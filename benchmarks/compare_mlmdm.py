r"""Side-by-side speed and memory of apple/ml-mdm (PyTorch) and mdm-jax on the same models, shapes and device.

Each implementation runs in its own worker subprocess (peak RSS / device memory are per process). A worker builds
its model, compiles / warms up, then times one step per request from this parent. Order: ``interleaved`` starts
both workers and alternates single steps A-B-B-A-A-B...; ``sequential`` runs one worker at a time (for models too
big for two processes at once), swapping which goes first from one case to the next. ``auto`` interleaves only
the small parity models. The table reports medians over ``--reps`` timed steps after ``--warmup``.

Cases are ``MODEL:KIND:bBATCH:DTYPE``: MODEL ``p1``/``p2`` (parity fixture configs, ``configs.json``) or a paper
architecture (``S64``, ``S64S256``, ...); KIND ``train`` (loss + backward + clip 2.0 + Adam + EMA 0.9999, as
ml-mdm's ``trainer.train_batch`` / our jitted train step), ``sampler`` (one CFG DDIM step with dynamic_if
thresholding: the network on 2×batch, guidance, update; ``--sampler_steps`` steps per timed call, reported per
step) or ``fwd`` (one no-grad forward at the batch); a ``:lowmem`` suffix on a train case runs ours in its
low-memory setting (one micro-batch per sample in a ``lax.scan``, remat, XLA:CPU's memory-optimised scheduler, bf16
first moment); DTYPE ``fp32`` or ``bf16`` (ml-mdm: ``torch.autocast``
bfloat16 as its trainer's ``--fp16``, with its GradScaler; ours: ``dtype=bfloat16`` compute, float32 parameters).
Text: 128 tokens of width 2048 for the paper models, the fixture's length/width for p1/p2. On CUDA, TF32 is on for
torch (as ml-mdm's trainer sets it) and JAX uses its default matmul precision (TF32 on Ampere+ for float32).

FLOPs: XLA's cost analysis of our compiled step (for the sampler, XLA counts the scan body once, i.e. one step),
used for both implementations' TFLOP/s; MFU = TFLOP/s / ``--peak_tflops``.

    python benchmarks/compare_mlmdm.py --mlmdm=/path/to/ml-mdm --cases=p2:train:b8:fp32,p2:sampler:b8:fp32
    python benchmarks/compare_mlmdm.py --mlmdm=... --device=cuda --cases=gpu --json_out=/tmp/cmp.json
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import resource
import signal
import subprocess
import sys
import threading
import time
from typing import Any

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_PARITY = os.environ.get("MDM_PARITY_DIR", os.path.join(REPO, "..", "shared", "parity"))
TAG = "@@"
CASE_SETS = {
    "small": "p2:train:b8:fp32,p2:sampler:b8:fp32",
    "issue12": ("p2:train:b8:fp32,p2:sampler:b8:fp32,S64:fwd:b1:fp32,S64:sampler:b1:fp32,S64:train:b1:fp32,"
                "S64:train:b4:fp32,S64:fwd:b1:bf16,S64:sampler:b1:bf16,S64:train:b1:bf16,"
                "S64:sampler:b4:fp32,S64:sampler:b4:bf16,S64:train:b4:bf16,S64:train:b4:fp32:lowmem,"
                "S64:train:b4:bf16:lowmem"),
    # Issue 8 item 7 / issue 12 item 5: the paper's per-GPU batches (S64 512/8 GPUs, S64S256 256/8), bf16 first.
    "gpu": ("S64:train:b64:bf16,S64S256:train:b32:bf16,S64:sampler:b64:bf16,S64:fwd:b64:bf16,"
            "S64S256:sampler:b32:bf16,p2:train:b8:bf16,S64:train:b64:fp32,S64S256:train:b32:fp32"),
}
IMPLS = ("mlmdm", "ours")
LIVE: set = set()  # running workers, killed if this parent is stopped


# ----------------------------------------------------------------------------------------------------------------
# Case description (parent side)


def parse_case(name: str) -> dict[str, Any]:
    parts = name.split(":")
    lowmem = len(parts) == 5 and parts[4] == "lowmem"
    if lowmem:
        parts = parts[:4]
    if len(parts) != 4 or parts[1] not in ("train", "sampler", "fwd") or parts[3] not in ("fp32", "bf16") \
            or not parts[2].startswith("b") or not parts[2][1:].isdigit() or (lowmem and parts[1] != "train"):
        raise SystemExit(f"--cases: {name!r} is not MODEL:train|sampler|fwd:bBATCH:fp32|bf16[:lowmem] (lowmem: train "
                         "only)")
    return {"name": name, "model": parts[0], "kind": parts[1], "batch": int(parts[2][1:]),
            "dtype": "float32" if parts[3] == "fp32" else "bfloat16", "lowmem": lowmem}


def case_configs(case: dict[str, Any], parity: str) -> dict[str, Any]:
    """ml-mdm model / diffusion config dicts and text shape for a case (computed once, given to both workers)."""
    if case["model"] in ("p1", "p2"):
        with open(os.path.join(parity, "configs.json")) as f:
            entry = json.load(f)["models"][case["model"]]
        return {"mlmdm_model": entry["unet_config"], "mlmdm_diffusion": entry["diffusion_config"],
                "nested": entry["model"] == "nested_unet", "tokens": int(entry["unet_fixture"]["tokens"]),
                "width": int(entry["unet_config"]["conditioning_feature_dim"]),
                "resolutions": [int(r) for r in entry["derived"]["resolutions"]]}
    sys.path.insert(0, REPO)
    from benchmarks.mlmdm_torch import mlmdm_model_config
    from mdm_jax.models.architectures import get_architecture

    cfg = get_architecture(case["model"]).to_dict()
    res, c = [], cfg
    while c is not None:
        res.append(int(c["resolution"]))
        c = c.get("inner_config")
    return {"mlmdm_model": mlmdm_model_config(cfg), "mlmdm_diffusion": None, "nested": len(res) > 1,
            "tokens": 128, "width": int(cfg["conditioning_feature_dim"]), "resolutions": res}


# ----------------------------------------------------------------------------------------------------------------
# Workers (child side): build, warm up, then answer "run" / "stats" / "quit" on stdin.


def _emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(f"{TAG} {json.dumps(obj)}\n")
    sys.stdout.flush()


def _serve(step, sync, stats: dict[str, Any], peak_mem, warmup: int) -> None:
    t0 = time.perf_counter()
    for _ in range(warmup):
        step()
    if warmup:
        sync()
    stats["warmup_s"] = round(time.perf_counter() - t0, 2)
    _emit({"ready": True, **stats})
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "run":
            t0 = time.perf_counter()
            step()
            sync()
            _emit({"t": time.perf_counter() - t0})
        elif cmd == "stats":
            _emit({"peak_mem_gb": peak_mem(), "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                   / 2**20})
        elif cmd == "quit":
            return


def worker_ours(spec: dict[str, Any]) -> None:
    import jax
    import jax.numpy as jnp
    import numpy as np

    sys.path.insert(0, REPO)
    sys.path.insert(0, HERE)
    case, cfg = spec["case"], spec["cfg"]
    dev = jax.devices()[0]
    stats: dict[str, Any] = {"device": f"{dev.platform}:{dev.device_kind}", "jax": jax.__version__}
    if spec["device"] == "cuda" and dev.platform != "gpu":
        raise RuntimeError(f"--device=cuda but JAX's default device is {dev.platform}: install jax with CUDA")
    if spec["jax_cache"]:
        jax.config.update("jax_compilation_cache_dir", spec["jax_cache"])
    t_build = time.perf_counter()
    if case["kind"] == "train":
        import bench_train

        low = bool(case.get("lowmem"))  # our low-memory training setting (README, Benchmarks); ml-mdm runs as ever
        args = argparse.Namespace(model=case["model"], batch=case["batch"], dtype=case["dtype"], remat=low,
                                  mu_dtype="bfloat16" if low else "", grad_accum=case["batch"] if low else 0,
                                  memory_scheduler=low, parity=os.path.join(spec["parity"], "configs.json"),
                                  cache=spec["jax_cache"])
        built = bench_train.build_step(args)
        compiled, batch = built["compiled"], built["batch"]
        box = {"state": built["init_state"](jax.random.key(0))}
        stats["params"] = int(sum(x.size for x in jax.tree.leaves(box["state"].params)))
        stats["flops"] = built["flops"]

        def step():
            box["state"], box["out"] = compiled(box["state"], batch, {})
    else:
        import bench_sampler

        b, tokens = case["batch"], cfg["tokens"]
        if case["model"] in ("p1", "p2"):
            apply_fn, params, dspec, shape, cond, n = bench_sampler.fixture_model(
                case["model"], b, tokens, case["dtype"], parity=spec["parity"])
        else:
            apply_fn, params, dspec, shape, cond, n = bench_sampler.architecture_model(
                case["model"], b, tokens, 1.0, case["dtype"])
        stats["params"] = int(n)
        if case["kind"] == "fwd":
            rng = np.random.default_rng(0)
            xs = [jnp.asarray(rng.standard_normal((b, r, r, 3)), jnp.float32) for r in cfg["resolutions"]]
            t = jnp.full((b,), 500, jnp.int32)
            cond_b = jax.tree.map(lambda a: a[:b], cond)
            fwd = jax.jit(lambda p, xs, t, c: apply_fn(p, xs, t, c))
            compiled = fwd.lower(params, xs, t, cond_b).compile()
            call = (params, xs, t, cond_b)
        else:
            from mdm_jax.diffusion.sampler import lower_sample

            lowered, call = lower_sample(
                jax.tree_util.Partial(apply_fn, params), dspec, cond, shape=shape, rng=jax.random.PRNGKey(1),
                num_steps=spec["sampler_steps"], method="ddim", eta=0.0, guidance_weight=spec["guidance"],
                threshold_kind="dynamic_if")
            compiled = lowered.compile()
        cost = compiled.cost_analysis()
        cost = cost[0] if isinstance(cost, (list, tuple)) else cost
        stats["flops"] = float(cost.get("flops", float("nan")))
        box = {}

        def step():
            box["out"] = compiled(*call)
    stats["build_s"] = round(time.perf_counter() - t_build, 2)

    def peak_mem():
        try:
            return dev.memory_stats()["peak_bytes_in_use"] / 2**30
        except Exception:  # CPU: no device memory stats; RSS is reported instead
            return None

    _serve(step, lambda: jax.block_until_ready(box["out"]), stats, peak_mem, spec["warmup"])


def worker_mlmdm(spec: dict[str, Any]) -> None:
    import numpy as np
    import torch

    sys.path.insert(0, REPO)
    sys.path.insert(0, HERE)
    import bench_train

    from benchmarks.mlmdm_torch import build_diffusion, build_vision_model, diffusion_config, import_mlmdm

    case, cfg = spec["case"], spec["cfg"]
    if spec["torch_threads"]:
        torch.set_num_threads(spec["torch_threads"])
    cuda = spec["device"] == "cuda"
    if cuda and not torch.cuda.is_available():
        raise RuntimeError("--device=cuda but torch.cuda.is_available() is False")
    device = torch.device("cuda" if cuda else "cpu")
    if cuda:  # ml-mdm's train_parallel.py enables TF32 for matmul and cuDNN
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = spec["cudnn_benchmark"]  # off unless asked: ml-mdm does not set it
    stubbed = import_mlmdm(spec["mlmdm"])
    from ml_mdm import samplers
    from ml_mdm.models.model_ema import ModelEma

    stats: dict[str, Any] = {"torch": torch.__version__, "shim": stubbed,
                             "device": torch.cuda.get_device_name() if cuda else "cpu"}
    t_build = time.perf_counter()
    torch.manual_seed(0)
    vision = build_vision_model(cfg["mlmdm_model"])
    diff = build_diffusion(vision, diffusion_config(cfg["mlmdm_diffusion"], nested=cfg["nested"])).to(device)
    vision = diff.get_model().vision_model
    stats["params"] = int(sum(p.numel() for p in vision.parameters()))
    bf16 = case["dtype"] == "bfloat16"
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    def autocast():
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=bf16)

    b, res = case["batch"], cfg["resolutions"]
    nb = bench_train.synthetic_batch(b, res[0], cfg["tokens"], cfg["width"])
    images = torch.from_numpy(nb["images"]).permute(0, 3, 1, 2).contiguous().to(device)  # NHWC -> NCHW
    lm, mask = torch.from_numpy(nb["lm_outputs"]).to(device), torch.from_numpy(nb["lm_mask"]).to(device)
    if case["kind"] == "train":
        vision.train()
        opt = torch.optim.Adam(vision.parameters(), lr=5e-5, betas=(0.9, 0.99), eps=1e-8)
        ema = ModelEma(vision)
        scaler = torch.amp.GradScaler(device.type) if bf16 else None
        sample = {"images": images, "lm_outputs": lm, "lm_mask": mask}

        def step():  # ml_mdm/trainer.py train_batch (no logger / lr scheduler), fp16=1 <-> bf16 autocast
            with autocast():
                losses, _, _, _, _, weights = diff.get_loss(sample)
                loss = losses.mean() if weights is None else (losses * weights).sum() / weights.sum()
                loss_val = loss.item()
            if np.isnan(loss_val):
                raise FloatingPointError("ml-mdm loss is NaN")
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.unscale_(opt)
                torch.nn.utils.clip_grad_norm_(vision.parameters(), 2.0).item()
                scaler.step(opt)
                scaler.update()
            else:
                loss.backward()
                torch.nn.utils.clip_grad_norm_(vision.parameters(), 2.0).item()
                opt.step()
            ema.update(vision)
            opt.zero_grad()
    else:
        vision.eval()
        torch.set_grad_enabled(False)
        gen = torch.Generator().manual_seed(0)
        xs = [torch.randn(b, 3, r, r, generator=gen).to(device) for r in res]
        if case["kind"] == "fwd":
            t = torch.full((b,), 500.0, device=device)

            def step():
                with autocast():
                    vision(xs if len(xs) > 1 else xs[0], t, lm, mask)
        else:
            sampler, model = diff.sampler, diff.get_model()
            sampler._config.threshold_function = samplers.ThresholdType.DYNAMIC_IF  # same as ours
            steps = [int(s) for s in sampler.set_timesteps(spec["sampler_steps"])]
            lm2, mask2 = torch.cat([lm, lm]), torch.cat([mask, mask])  # [negative ; prompt] rows

            def step():
                x = list(xs) if len(xs) > 1 else xs[0]
                with autocast():
                    for t, s in zip(steps[:-1], steps[1:], strict=True):
                        x = sampler.get_xt_minus_1(model, t, x, lm2, mask2, {}, time_step_last=s,
                                                   guidance_scale=spec["guidance"], ddim_eta=0.0)
    stats["build_s"] = round(time.perf_counter() - t_build, 2)

    def peak_mem():
        return torch.cuda.max_memory_allocated() / 2**30 if cuda else None

    _serve(step, sync, stats, peak_mem, spec["warmup"])


def worker_main(kind: str, spec_json: str) -> None:
    spec = json.loads(spec_json)
    try:
        (worker_ours if kind == "ours" else worker_mlmdm)(spec)
    except BaseException as e:  # one line the parent can show in the table
        msg = f"{type(e).__name__}: {e}".replace("\n", " ")
        _emit({"error": msg[:400]})
        raise


# ----------------------------------------------------------------------------------------------------------------
# Parent: start workers, alternate steps, collect numbers.


class Worker:
    """A worker subprocess answering over stdout lines tagged ``@@``; all waits are bounded by a deadline."""

    def __init__(self, impl: str, spec: dict[str, Any], timeout: float, log_dir: str) -> None:
        LIVE.add(self)
        self.impl, self.deadline = impl, time.monotonic() + timeout
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env["PYTHONPATH"] = os.pathsep.join([REPO, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        if impl == "ours":
            # No up-front grab of 75% of GPU memory: the peak is then what the step needs, and the torch worker
            # can run next to this one.
            env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
            if spec["device"] == "cpu":
                # JAX's CPU backend only, as torch runs without CUDA: with the `tpu` extra installed JAX would
                # otherwise load and probe libtpu (0.1 GiB of RSS, and a page of warnings) on a machine without one.
                env.setdefault("JAX_PLATFORMS", "cpu")
        os.makedirs(log_dir, exist_ok=True)
        self.log_path = os.path.join(log_dir, f"{spec['case']['name'].replace(':', '_')}.{impl}.log")
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), f"--worker={impl}", "--spec", json.dumps(spec)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, text=True, env=env,
            start_new_session=True)
        self.lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        for line in self.proc.stdout:
            if line.startswith(TAG):
                self.lines.put(json.loads(line[len(TAG):]))
            else:
                self.log.write(line)
        self.lines.put(None)

    def read(self) -> dict[str, Any]:
        left = self.deadline - time.monotonic()
        try:
            msg = self.lines.get(timeout=max(left, 0.01))
        except queue.Empty:
            self.kill()
            raise TimeoutError(f"{self.impl}: no answer within --timeout") from None
        if msg is None:
            self.proc.wait()
            raise RuntimeError(f"{self.impl}: worker exited ({self.proc.returncode}): {self.tail()}")
        if "error" in msg:
            raise RuntimeError(f"{self.impl}: {msg['error']}")
        return msg

    def send(self, cmd: str) -> dict[str, Any] | None:
        self.proc.stdin.write(cmd + "\n")
        self.proc.stdin.flush()
        return None if cmd == "quit" else self.read()

    def tail(self) -> str:
        self.log.flush()
        try:
            with open(self.log_path) as f:
                lines = [ln.strip() for ln in f.read().splitlines() if ln.strip()]
        except OSError:
            return ""
        return " | ".join(lines[-3:])[-400:]

    def close(self) -> None:
        try:
            if self.proc.poll() is None:
                self.send("quit")
                self.proc.wait(timeout=60)
        except Exception:
            self.kill()
        LIVE.discard(self)
        self.log.close()

    def kill(self) -> None:
        LIVE.discard(self)
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait()


def _median(xs: list[float]) -> float:
    s = sorted(xs)
    n = len(s)
    return s[n // 2] if n % 2 else 0.5 * (s[n // 2 - 1] + s[n // 2])


def run_case(case: dict[str, Any], args: argparse.Namespace, first: str, deadline: float) -> dict[str, Any]:
    """Times both implementations on one case; errors end up in the result, never raised.

    Each worker may run ``--timeout`` seconds but never past ``deadline`` (time.monotonic()).
    """
    result: dict[str, Any] = {"case": case["name"], **{i: {} for i in IMPLS}}
    try:
        cfg = case_configs(case, args.parity)
    except Exception as e:
        for i in IMPLS:
            result[i]["error"] = f"config: {type(e).__name__}: {e}"
        return result
    spec = {"case": case, "cfg": cfg, "parity": args.parity, "mlmdm": args.mlmdm, "device": args.device,
            "warmup": args.warmup, "sampler_steps": args.sampler_steps, "guidance": args.guidance,
            "torch_threads": args.torch_threads, "jax_cache": args.jax_cache,
            "cudnn_benchmark": args.cudnn_benchmark}
    order = [i for i in (first, next(i for i in IMPLS if i != first)) if i in args.impls]
    interleave = args.order == "interleaved" or (args.order == "auto" and case["model"] in ("p1", "p2"))
    result["order"] = "interleaved" if interleave else f"sequential ({order[0]} first)"
    per_step = args.sampler_steps if case["kind"] == "sampler" else 1

    def start(impl: str) -> Worker | None:
        left = deadline - time.monotonic()
        if left < 20:
            result[impl]["error"] = "skipped: --budget_s used up"
            return None
        w = Worker(impl, spec, min(args.timeout, left), args.log_dir)
        try:
            result[impl].update(w.read())
            result[impl].pop("ready", None)
            return w
        except Exception as e:
            result[impl]["error"] = str(e)
            w.kill()
            return None

    def finish(impl: str, w: Worker, times: list[float]) -> None:
        try:
            result[impl].update(w.send("stats"))
        except Exception as e:
            result[impl]["error"] = str(e)
        w.close()
        if times:
            result[impl]["times"] = [round(t / per_step, 5) for t in times]
            result[impl]["median_s"] = _median(times) / per_step

    if interleave:
        workers = {i: start(i) for i in order}
        times: dict[str, list[float]] = {i: [] for i in IMPLS}
        for r in range(args.reps):
            for impl in (order if r % 2 == 0 else order[::-1]):  # A B B A A B ...
                w = workers[impl]
                if w is None:
                    continue
                try:
                    times[impl].append(w.send("run")["t"])
                except Exception as e:
                    result[impl]["error"] = str(e)
                    workers[impl] = None
        for impl, w in workers.items():
            if w is not None:
                finish(impl, w, times[impl])
    else:
        for impl in order:
            w = start(impl)
            if w is None:
                continue
            times = []
            try:
                for _ in range(args.reps):
                    times.append(w.send("run")["t"])
            except Exception as e:
                result[impl]["error"] = str(e)
            finish(impl, w, times)
    flops = result["ours"].get("flops")
    for impl in IMPLS:
        m = result[impl].get("median_s")
        if m and flops and flops == flops:
            result[impl]["tflops"] = flops / m / 1e12
            result[impl]["mfu"] = result[impl]["tflops"] / args.peak_tflops
    return result


# ----------------------------------------------------------------------------------------------------------------
# Report


def _t(x: float | None) -> str:
    if x is None:
        return "–"
    return f"{x:.3f} s" if x < 10 else f"{x:.1f} s"


def _mem(r: dict[str, Any], gpu: bool) -> str:
    v = r.get("peak_mem_gb") if gpu else r.get("peak_rss_gb")
    return "–" if v is None else f"{v:.1f} GB"


def _cell(r: dict[str, Any]) -> str:
    if not r:
        return "–"
    if "median_s" in r:
        return _t(r["median_s"]) + (" (!)" if "error" in r else "")
    return "error: " + r.get("error", "no result")[:160].replace("|", "/")


KIND_LABELS = {"train": "train step (Adam + EMA, clip)", "sampler": "CFG sampler step", "fwd": "forward"}


def _label(name: str, params: int | None) -> str:
    c = parse_case(name)
    size = "" if not params else f" ({params / 1e6:.1f}M)" if params < 1e8 else f" ({params / 1e6:.0f}M)"
    dtype = "fp32" if c["dtype"] == "float32" else "bf16"
    low = ", ours as micro-batches of 1 + remat + memory scheduler + bf16 Adam mu" if c.get("lowmem") else ""
    return f"{c['model']}{size} batch {c['batch']} {dtype}, {KIND_LABELS[c['kind']]}{low}"


def table(results: list[dict[str, Any]], gpu: bool, peak: float) -> str:
    mem = "peak GPU memory (allocated)" if gpu else "peak RSS"
    head = ["case", "ml-mdm", "mdm-jax", "ml-mdm time / ours", f"{mem} ml-mdm", f"{mem} ours"]
    if gpu:
        head += ["GFLOP/step (XLA)", "TFLOP/s ml-mdm", "TFLOP/s ours", f"MFU ml-mdm (peak {peak:g})", "MFU ours"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for res in results:
        a, b = res["mlmdm"], res["ours"]
        ratio = f"{a['median_s'] / b['median_s']:.2f}" if "median_s" in a and "median_s" in b else "–"
        cells = [_label(res["case"], a.get("params") or b.get("params")), _cell(a), _cell(b), ratio,
                 _mem(a, gpu), _mem(b, gpu)]
        if gpu:
            cells.append(f"{b['flops'] / 1e9:,.0f}" if b.get("flops") else "–")
            cells += [f"{r['tflops']:.1f}" if "tflops" in r else "–" for r in (a, b)]
            cells += [f"{100 * r['mfu']:.1f}%" if "mfu" in r else "–" for r in (a, b)]
        if a.get("params") and b.get("params") and a["params"] != b["params"]:
            cells[0] += f" (params differ: {a['params']:,} vs {b['params']:,})"
        rows.append("| " + " | ".join(cells) + " |")
    return "\n".join(rows)


def _write_json(path: str, payload: dict[str, Any]) -> None:
    if not path:
        return
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=1)
    os.replace(tmp, path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--worker", choices=IMPLS, help=argparse.SUPPRESS)
    p.add_argument("--spec", help=argparse.SUPPRESS)
    p.add_argument("--mlmdm", help="root of an apple/ml-mdm checkout (current or pre-2025 layout)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                   help="cuda: torch on the GPU; JAX uses its default backend (the GPU when jax[cuda] is installed)")
    p.add_argument("--cases", default="small",
                   help=f"comma-separated MODEL:KIND:bBATCH:DTYPE and/or set names {sorted(CASE_SETS)}")
    p.add_argument("--reps", type=int, default=5, help="timed steps per implementation (median reported)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps after building / compiling")
    p.add_argument("--order", default="auto", choices=["auto", "interleaved", "sequential"])
    p.add_argument("--sampler_steps", type=int, default=5, help="sampler steps per timed call")
    p.add_argument("--guidance", type=float, default=7.5)
    p.add_argument("--timeout", type=float, default=1800, help="seconds per worker subprocess, all included")
    p.add_argument("--budget_s", type=float, default=0,
                   help="total seconds: workers get at most what is left, later cases are skipped (0 = none)")
    p.add_argument("--cudnn_benchmark", action="store_true", help="torch.backends.cudnn.benchmark = True")
    p.add_argument("--torch_threads", type=int, default=0, help="torch.set_num_threads (0 = torch's default)")
    p.add_argument("--peak_tflops", type=float, default=989.0,
                   help="device peak for MFU (989 = H100/H200 dense bf16)")
    p.add_argument("--impls", default="mlmdm,ours", help="which implementations to run (debugging: one of them)")
    p.add_argument("--jax_cache", default="", help="JAX persistent compilation cache folder ('' = off)")
    p.add_argument("--parity", default=DEFAULT_PARITY, help="folder with the parity fixtures' configs.json")
    p.add_argument("--json_out", default="", help="results as JSON (rewritten after every case)")
    p.add_argument("--log_dir", default="", help="worker stderr logs (default: a temp folder)")
    args = p.parse_args()
    args.impls = [i for i in args.impls.split(",") if i]
    if args.worker:
        worker_main(args.worker, args.spec)
        return
    if not args.mlmdm:
        p.error("--mlmdm is required: the root of an apple/ml-mdm checkout")
    if not os.path.exists(os.path.join(args.parity, "configs.json")):
        p.error(f"--parity={args.parity}: no configs.json there (the parity fixtures' folder)")
    if not args.log_dir:
        import tempfile

        args.log_dir = tempfile.mkdtemp(prefix="compare_mlmdm_")
    names = []
    for item in args.cases.split(","):
        names += CASE_SETS[item].split(",") if item in CASE_SETS else [item]
    cases = [parse_case(n) for n in names if n]
    gpu = args.device == "cuda"
    print(f"compare_mlmdm: {len(cases)} cases on {args.device}, reps {args.reps}, warmup {args.warmup}, "
          f"order {args.order}; worker logs in {args.log_dir}", flush=True)
    results: list[dict[str, Any]] = []
    t0 = time.time()

    def stop(signum, frame):  # a timeout around this script: end the workers, still print what was measured
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, stop)
    try:
        for k, case in enumerate(cases):
            deadline = time.monotonic() + (args.budget_s - (time.time() - t0) if args.budget_s else 1e9)
            res = run_case(case, args, IMPLS[k % 2], deadline)
            res["wall_s"] = round(time.time() - t0, 1)
            results.append(res)
            a, b = res["mlmdm"], res["ours"]
            print(f"[{res['wall_s']:7.1f}s] {case['name']}: ml-mdm {_cell(a)} / ours {_cell(b)} "
                  f"(mem {_mem(a, gpu)} / {_mem(b, gpu)}; {res['order']})", flush=True)
            _write_json(args.json_out, {"device": args.device, "args": {k: v for k, v in vars(args).items()
                                                                         if k not in ("worker", "spec")},
                                        "results": results})
    except KeyboardInterrupt as e:
        print(f"stopped ({e}); {len(results)} of {len(cases)} cases done", flush=True)
    finally:
        for w in list(LIVE):
            w.kill()
    print()
    print(table(results, gpu, args.peak_tflops), flush=True)


if __name__ == "__main__":
    main()
