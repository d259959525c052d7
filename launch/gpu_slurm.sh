#!/usr/bin/env bash
# Multi-node GPU training under SLURM: submits itself with sbatch, then (inside the job) starts the processes with
# srun, forwards the preemption/time-limit signal to them, and requeues the job so it resumes from WORKDIR.
#
#   launch/gpu_slurm.sh [options] CONFIG WORKDIR [main.py args...]
#   launch/gpu_slurm.sh --nodes=4 --gpus-per-node=8 --time=24:00:00 configs/cc12m_256.py /ckpt/cc12m_256 \
#       --config.data.file_list=/data/cc12m/training.tsv
#
# Options (before CONFIG):
#   --nodes=N            nodes (default 1)             --gpus-per-node=G   GPUs per node (default 8)
#   --procs=gpu|node     gpu (default): one process per GPU (srun --ntasks-per-node=G --gpus-per-task=1; each
#                        process drives the GPU SLURM bound to it, --local_device_ids=visible);
#                        node: one process per node driving all G GPUs (--local_device_ids=0,...,G-1).
#   --time=HH:MM:SS --partition=P --account=A --qos=Q --job-name=NAME   passed to sbatch
#   --signal-seconds=S   SIGTERM this long before the time limit (default 120; sbatch --signal=B:TERM@S)
#   --max-restarts=K     requeue at most K times (default 100)
#   --dry-run            print the sbatch command, and the commands the job would run, without running them
#
# Stopping and resuming: sbatch --signal=B:TERM@S sends SIGTERM to this script (the batch shell) S seconds before
# the time limit, as does a preemption with PreemptParameters=send_user_signal; the script forwards it to srun,
# which forwards it to every task; each python process saves a checkpoint and exits 0; the script then runs
# `scontrol requeue $SLURM_JOB_ID` (the job was submitted with --requeue), and the requeued job starts this script
# again with the same arguments: the trainer resumes from the newest checkpoint in WORKDIR. A run that finishes
# without a signal is not requeued.
set -euo pipefail

NODES=1 GPUS=8 PROCS=gpu SIGNAL_SECONDS=120 MAX_RESTARTS=100 DRY_RUN=0
SBATCH_EXTRA=()
while [[ $# -gt 0 && $1 == --* ]]; do
  case $1 in
    --nodes=*) NODES=${1#*=} ;;
    --gpus-per-node=*) GPUS=${1#*=} ;;
    --procs=*) PROCS=${1#*=} ;;
    --signal-seconds=*) SIGNAL_SECONDS=${1#*=} ;;
    --max-restarts=*) MAX_RESTARTS=${1#*=} ;;
    --time=* | --partition=* | --account=* | --qos=* | --job-name=*) SBATCH_EXTRA+=("$1") ;;
    --dry-run) DRY_RUN=1 ;;
    *) echo "gpu_slurm.sh: unknown option $1 (see the header of $0)" >&2; exit 2 ;;
  esac
  shift
done
CONFIG=${1:?usage: gpu_slurm.sh [options] CONFIG WORKDIR [main.py args...]}
WORKDIR=${2:?usage: gpu_slurm.sh [options] CONFIG WORKDIR [main.py args...]}
shift 2
case $PROCS in
  gpu) TASKS_PER_NODE=$GPUS; STEP_GPUS=(--gpus-per-task=1); DEVICE_IDS=visible ;;
  node) TASKS_PER_NODE=1; STEP_GPUS=(--gpus-per-node="$GPUS"); DEVICE_IDS=$(seq -s, 0 $((GPUS - 1))) ;;
  *) echo "gpu_slurm.sh: --procs must be 'gpu' or 'node', got '$PROCS'" >&2; exit 2 ;;
esac

# show(); inside a job SLURM runs a spooled copy of this script, from --chdir (the repository).
. "$(dirname "${BASH_SOURCE[0]}")/common.sh" 2>/dev/null || . "$PWD/launch/common.sh"

if [[ -z ${MDM_SLURM_IN_JOB:-} ]]; then
  # ---- submit ------------------------------------------------------------------------------------------------
  REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
  cmd=(sbatch --job-name=mdm-jax "${SBATCH_EXTRA[@]}" --nodes="$NODES" --ntasks-per-node="$TASKS_PER_NODE"
       --gpus-per-node="$GPUS" --exclusive --requeue --open-mode=append --signal=B:TERM@"$SIGNAL_SECONDS"
       --chdir="$REPO" --output="slurm-mdm-%j.out" --export=ALL,MDM_SLURM_IN_JOB=1
       "$REPO/launch/gpu_slurm.sh" --nodes="$NODES" --gpus-per-node="$GPUS" --procs="$PROCS"
       --max-restarts="$MAX_RESTARTS" "$CONFIG" "$WORKDIR" "$@")
  if [[ $DRY_RUN == 1 ]]; then
    echo "# submit:"; show "${cmd[@]}"
    echo "# then, inside the job (batch shell on the first node):"
    MDM_SLURM_IN_JOB=1 SLURM_JOB_ID='$SLURM_JOB_ID' "$REPO/launch/gpu_slurm.sh" --dry-run --nodes="$NODES" \
      --gpus-per-node="$GPUS" --procs="$PROCS" --max-restarts="$MAX_RESTARTS" "$CONFIG" "$WORKDIR" "$@"
    exit 0
  fi
  exec "${cmd[@]}"
fi

# ---- inside the job ------------------------------------------------------------------------------------------
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.92}
run=(srun --nodes="$NODES" --ntasks=$((NODES * TASKS_PER_NODE)) --ntasks-per-node="$TASKS_PER_NODE" "${STEP_GPUS[@]}"
     --kill-on-bad-exit=1
     python -m mdm_jax.main --config="$CONFIG" --workdir="$WORKDIR" --local_device_ids="$DEVICE_IDS" "$@")
if [[ $DRY_RUN == 1 ]]; then
  show "${run[@]}"
  echo "# on SIGTERM: kill -TERM <srun pid> (srun forwards it to every task), wait, then:"
  show scontrol requeue "$SLURM_JOB_ID"
  exit 0
fi
echo "gpu_slurm.sh: job ${SLURM_JOB_ID:-?} restart ${SLURM_RESTART_COUNT:-0}: $(show "${run[@]}")"
stop=0
forward() { stop=1; echo "gpu_slurm.sh: SIGTERM: asking the tasks to save and stop"; [[ -n ${srun_pid:-} ]] && kill -TERM "$srun_pid" 2>/dev/null || true; }
trap forward TERM
"${run[@]}" &
srun_pid=$!
# `wait` returns early (status 128+15) when the trap runs: keep waiting while srun lives, then read srun's own
# exit status (bash keeps it for the finished child), never the interrupted wait's.
while kill -0 "$srun_pid" 2>/dev/null; do
  wait "$srun_pid" || true
done
wait "$srun_pid" && status=0 || status=$?
trap - TERM
if [[ $stop == 1 ]]; then
  if (( ${SLURM_RESTART_COUNT:-0} >= MAX_RESTARTS )); then
    echo "gpu_slurm.sh: stopped, not requeued (restart ${SLURM_RESTART_COUNT:-0} >= --max-restarts=$MAX_RESTARTS)"
  else
    echo "gpu_slurm.sh: tasks exited with status $status; requeueing job $SLURM_JOB_ID to resume from $WORKDIR"
    # (Under PreemptMode=REQUEUE SLURM requeues the job itself; a failing call here is then harmless.)
    scontrol requeue "$SLURM_JOB_ID" || echo "gpu_slurm.sh: scontrol requeue failed (already requeued?)"
  fi
fi
exit "$status"
