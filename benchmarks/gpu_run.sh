#!/usr/bin/env bash
# One-shot GPU comparison of apple/ml-mdm (torch CUDA) and mdm-jax (jax CUDA) for issue 8 item 7 / issue 12
# item 5: S64 (per-GPU batch 64) and S64S256 (per-GPU batch 32) train steps in bf16 first, then the S64 CFG sampler
# step and forward, then fp32 train steps while time is left. Sized for one <= 9-minute device call.
#
#   OUT=/tmp/out MLMDM=carry/mlmdm_src PARITY=carry/parity bash benchmarks/gpu_run.sh
#
# MLMDM: an ml-mdm checkout (e.g. a copy of /work/mlmdm_src, with mlmdm_shim.py); PARITY: a folder holding the
# parity fixtures' configs.json; WHEELS (optional): a folder of wheels installed first with pip --no-index;
# BUDGET_S: seconds for all cases (default 450). Results go to $OUT as they come: compare.json (rewritten after
# every case), compare.log (everything printed), env.txt, worker logs under $OUT/workers/.
# Prepared for the device tool (this workplace): in the repo root, copy the checkout and configs.json into an
# ignored folder (.devcarry/mlmdm_src, .devcarry/parity/configs.json) and download the wheels the GPU image lacks
# (ml_collections; grain, array_record and portpicker only if the trainer is imported) into .whl/; then one run with
# carry [".devcarry", ".whl"], timeout_s ~560 and
#   OUT=$OUT MLMDM=.devcarry/mlmdm_src PARITY=.devcarry/parity WHEELS=.whl BUDGET_S=450 bash benchmarks/gpu_run.sh
set -u
OUT=${OUT:-/tmp/compare_out}
MLMDM=${MLMDM:-carry/mlmdm_src}
PARITY=${PARITY:-carry/parity}
BUDGET_S=${BUDGET_S:-450}
CASES=${CASES:-S64:train:b64:bf16,S64S256:train:b32:bf16,S64:sampler:b64:bf16,S64:fwd:b64:bf16,S64S256:sampler:b32:bf16,S64:train:b64:fp32,S64S256:train:b32:fp32}
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$OUT/workers"
LOG="$OUT/compare.log"

if [ -n "${WHEELS:-}" ] && [ -d "$WHEELS" ]; then
  pip install -q --no-index --find-links "$WHEELS" "$WHEELS"/*.whl 2>&1 | tail -3 | tee -a "$LOG"
fi
{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1
  python -c "import torch, jax; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available()); print('jax', jax.__version__, jax.devices())" 2>&1
  python -c "import ml_collections, einops, tqdm; print('ml_collections, einops, tqdm: ok')" 2>&1
} | tee "$OUT/env.txt" | tee -a "$LOG"

# The parent stops itself (SIGTERM -> workers killed, table of the finished cases printed) before the call ends.
timeout -s TERM $((BUDGET_S + 30)) python benchmarks/compare_mlmdm.py --device=cuda --mlmdm="$MLMDM" \
  --parity="$PARITY" --cases="$CASES" --reps=5 --warmup=2 --sampler_steps=5 --order=sequential \
  --timeout=240 --budget_s="$BUDGET_S" --json_out="$OUT/compare.json" --log_dir="$OUT/workers" 2>&1 | tee -a "$LOG"
echo "exit ${PIPESTATUS[0]}" | tee -a "$LOG"
