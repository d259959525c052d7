#!/usr/bin/env bash
# Train on a Cloud TPU slice: (optionally) get the slice through a queued resource, ship this repository to every
# worker, install it there (pip install -e '.[tpu]'), and start the same command on all workers (--worker=all).
# Each worker's jax.distributed.initialize() finds the others itself (main.py sees the TPU chips on the PCI bus of a
# Cloud TPU VM; JAX reads the slice's workers from the VM metadata). The workdir must be on gs://: every worker
# writes its shards of each checkpoint there, and a restarted (or re-created) slice resumes from it.
#
#   launch/tpu_pod.sh [options] CONFIG gs://BUCKET/RUN [main.py args...]
#
#   # a v5p-64 (32 chips, 8 hosts) as a spot queued resource, then train:
#   launch/tpu_pod.sh --tpu=mdm-v5p --zone=us-east5-a --create=queued --accelerator-type=v5p-64 --spot \
#       configs/cc12m_256.py gs://my-bucket/mdm/cc12m_256 --config.data.file_list=gs://my-bucket/cc12m/train.tsv
#   # after a preemption the same command re-creates the slice and resumes from the newest checkpoint.
#
# Options (before CONFIG; TPU/ZONE/PROJECT may also come from the environment):
#   --tpu=NAME --zone=ZONE [--project=PROJECT]
#   --create=none|queued|direct   none (default): the slice exists. queued: `gcloud compute tpus queued-resources
#                                 create` and wait until ACTIVE. direct: `gcloud compute tpus tpu-vm create`.
#   --accelerator-type=TYPE       e.g. v5p-8, v5p-64, v6e-16, v5litepod-16 (with --create)
#   --runtime-version=VERSION     default from the type: v2-alpha-tpuv5 (v5p), v2-alpha-tpuv6e (v6e),
#                                 v2-alpha-tpuv5-lite (v5e), tpu-ubuntu2204-base (v4)
#   --spot                        spot capacity (with --create)
#   --no-ship / --no-install      skip copying the code / pip install (already there)
#   --attach                      stay attached and stream every worker's output (default: run detached with
#                                 nohup; log ~/mdm-train.log and pid ~/mdm-train.pid on each worker)
#   --stop                        send SIGTERM to the training on every worker (it saves a checkpoint and exits)
#   --allow-local-workdir         accept a non-gs:// WORKDIR (a single-host slice, or a shared filesystem)
#   --dry-run                     print every command instead of running it
set -euo pipefail

TPU=${TPU:-} ZONE=${ZONE:-} PROJECT=${PROJECT:-} CREATE=none ACCEL= RUNTIME= SPOT=0 SHIP=1 INSTALL=1 ATTACH=0 STOP=0
LOCAL_OK=0 DRY_RUN=0
while [[ $# -gt 0 && $1 == --* ]]; do
  case $1 in
    --tpu=*) TPU=${1#*=} ;;
    --zone=*) ZONE=${1#*=} ;;
    --project=*) PROJECT=${1#*=} ;;
    --create=*) CREATE=${1#*=} ;;
    --accelerator-type=*) ACCEL=${1#*=} ;;
    --runtime-version=*) RUNTIME=${1#*=} ;;
    --spot) SPOT=1 ;;
    --no-ship) SHIP=0 ;;
    --no-install) INSTALL=0 ;;
    --attach) ATTACH=1 ;;
    --stop) STOP=1 ;;
    --allow-local-workdir) LOCAL_OK=1 ;;
    --dry-run) DRY_RUN=1 ;;
    *) echo "tpu_pod.sh: unknown option $1 (see the header of $0)" >&2; exit 2 ;;
  esac
  shift
done
: "${TPU:?set --tpu=NAME (or TPU)}" "${ZONE:?set --zone=ZONE (or ZONE)}"
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
GCLOUD_OPTS=(--zone="$ZONE")
[[ -n $PROJECT ]] && GCLOUD_OPTS+=(--project="$PROJECT")
REMOTE_DIR='~/mdm-jax'  # expanded by the worker's shell

. "$(dirname "${BASH_SOURCE[0]}")/common.sh"  # show
run() { if [[ $DRY_RUN == 1 ]]; then show "$@"; else "$@"; fi; }
on_all_workers() { run gcloud compute tpus tpu-vm ssh "$TPU" "${GCLOUD_OPTS[@]}" --worker=all --command="$1"; }

if [[ $STOP == 1 ]]; then
  on_all_workers 'kill -TERM "$(cat ~/mdm-train.pid)" && echo "$(hostname): SIGTERM sent"'
  exit 0
fi

CONFIG=${1:?usage: tpu_pod.sh [options] CONFIG WORKDIR [main.py args...]}
WORKDIR=${2:?usage: tpu_pod.sh [options] CONFIG WORKDIR [main.py args...]}
shift 2
if [[ $WORKDIR != gs://* && $LOCAL_OK != 1 ]]; then
  echo "tpu_pod.sh: WORKDIR must be gs://... (each worker has its own disk); got '$WORKDIR' (--allow-local-workdir" \
       "to override)" >&2
  exit 2
fi

# ---- 1. the slice --------------------------------------------------------------------------------------------
if [[ $CREATE != none ]]; then
  : "${ACCEL:?--create needs --accelerator-type=TYPE (e.g. v5p-64)}"
  if [[ -z $RUNTIME ]]; then
    case $ACCEL in
      v5p-*) RUNTIME=v2-alpha-tpuv5 ;;
      v6e-*) RUNTIME=v2-alpha-tpuv6e ;;
      v5litepod-* | v5e-*) RUNTIME=v2-alpha-tpuv5-lite ;;
      v4-*) RUNTIME=tpu-ubuntu2204-base ;;
      *) echo "tpu_pod.sh: no default runtime for '$ACCEL'; pass --runtime-version" >&2; exit 2 ;;
    esac
  fi
  spot=(); [[ $SPOT == 1 ]] && spot=(--spot)
  case $CREATE in
    queued)
      run gcloud compute tpus queued-resources create "$TPU" --node-id="$TPU" "${GCLOUD_OPTS[@]}" \
        --accelerator-type="$ACCEL" --runtime-version="$RUNTIME" "${spot[@]}"
      state_cmd=(gcloud compute tpus queued-resources describe "$TPU" "${GCLOUD_OPTS[@]}" --format='value(state.state)')
      if [[ $DRY_RUN == 1 ]]; then
        echo "# then, every 60 s until it prints ACTIVE:"; show "${state_cmd[@]}"
      else
        while state=$("${state_cmd[@]}"); [[ $state != ACTIVE ]]; do
          case $state in FAILED | SUSPENDED) echo "tpu_pod.sh: queued resource $TPU is $state" >&2; exit 1 ;; esac
          echo "tpu_pod.sh: queued resource $TPU is ${state:-?}; waiting"; sleep 60
        done
      fi ;;
    direct)
      run gcloud compute tpus tpu-vm create "$TPU" "${GCLOUD_OPTS[@]}" --accelerator-type="$ACCEL" \
        --version="$RUNTIME" "${spot[@]}" ;;
    *) echo "tpu_pod.sh: --create must be none, queued or direct" >&2; exit 2 ;;
  esac
fi

# ---- 2. ship and install the code on every worker ------------------------------------------------------------
if [[ $SHIP == 1 ]]; then
  archive=${TMPDIR:-/tmp}/mdm-jax-$$.tar.gz
  if [[ $DRY_RUN == 0 && -n $(git -C "$REPO" status --porcelain --untracked-files=no 2>/dev/null) ]]; then
    echo "tpu_pod.sh: note: uncommitted changes are not shipped (git archive HEAD)" >&2
  fi
  run git -C "$REPO" archive --format=tar.gz -o "$archive" HEAD
  run gcloud compute tpus tpu-vm scp "$archive" "$TPU":mdm-jax.tar.gz "${GCLOUD_OPTS[@]}" --worker=all
  on_all_workers "rm -rf $REMOTE_DIR && mkdir -p $REMOTE_DIR && tar xzf ~/mdm-jax.tar.gz -C $REMOTE_DIR"
fi
if [[ $INSTALL == 1 ]]; then
  on_all_workers "cd $REMOTE_DIR && python3 -m pip install -q -e '.[tpu]'"
fi

# ---- 3. train: the same command on every worker --------------------------------------------------------------
train="python3 -m mdm_jax.main $(show --config="$CONFIG" --workdir="$WORKDIR" "$@")"
if [[ $ATTACH == 1 ]]; then
  on_all_workers "cd $REMOTE_DIR && $train 2>&1 | tee -a ~/mdm-train.log"
else
  # nohup execs python, so $! is the trainer's pid (--stop sends it SIGTERM).
  on_all_workers "cd $REMOTE_DIR || exit 1; nohup $train > ~/mdm-train.log 2>&1 < /dev/null & echo \$! > ~/mdm-train.pid"
  echo "# started on every worker of $TPU; follow worker 0 with:"
  show gcloud compute tpus tpu-vm ssh "$TPU" "${GCLOUD_OPTS[@]}" --worker=0 --command='tail -f ~/mdm-train.log'
fi
