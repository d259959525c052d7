#!/usr/bin/env bash
# Multi-node GPU training under SLURM: one process per node, all local GPUs per process.
# jax.distributed.initialize() reads the SLURM environment (--distributed=auto sees SLURM_NTASKS > 1).
#
#   sbatch --nodes=4 --ntasks-per-node=1 --gpus-per-node=8 launch/gpu_slurm.sh configs/cc12m_256.py /ckpt/cc12m_256
#
# Paper scale: ImageNet on 8 A100s (one node), CC12M on 32 A100s (four nodes).
#SBATCH --job-name=mdm-jax
#SBATCH --exclusive
#SBATCH --signal=TERM@120
set -euo pipefail
CONFIG=${1:?config file}
WORKDIR=${2:?workdir}
shift 2
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.92}
# --signal=TERM@120: SLURM sends SIGTERM two minutes before the time limit; the trainer saves and exits.
# Resubmitting the same command resumes from the newest checkpoint in WORKDIR.
srun --kill-on-bad-exit=1 python -m mdm_jax.main --config="$CONFIG" --workdir="$WORKDIR" "$@"
