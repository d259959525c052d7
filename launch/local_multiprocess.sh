#!/usr/bin/env bash
# N processes on one machine talking through jax.distributed (gloo collectives on CPU): a rehearsal of a
# multi-host run. Each process gets DEVICES simulated CPU devices; process i logs to WORKDIR.process<i>.log.
#
#   launch/local_multiprocess.sh [--dry-run] N CONFIG WORKDIR [main.py args...]
#   launch/local_multiprocess.sh 2 configs/demo.py:tiny /tmp/mdm_mp
#
# A SIGTERM/SIGINT to this script is passed on to every process (each saves a checkpoint and exits); running the
# same command again resumes from WORKDIR.
set -euo pipefail
DRY_RUN=0
if [[ ${1:-} == --dry-run ]]; then DRY_RUN=1; shift; fi
N=${1:?usage: local_multiprocess.sh [--dry-run] N CONFIG WORKDIR [main.py args...]}
CONFIG=${2:?config}
WORKDIR=${3:?workdir}
shift 3
PORT=${PORT:-$((20000 + RANDOM % 20000))}
DEVICES=${DEVICES:-1}

. "$(dirname "${BASH_SOURCE[0]}")/common.sh"  # show

pids=()
forward() { echo "local_multiprocess.sh: forwarding the signal to ${pids[*]}" >&2; kill -TERM "${pids[@]}" 2>/dev/null || true; }
trap forward TERM INT
for ((i = 0; i < N; i++)); do
  cmd=(env JAX_PLATFORMS=cpu XLA_FLAGS="--xla_force_host_platform_device_count=$DEVICES"
       python -m mdm_jax.main --config="$CONFIG" --workdir="$WORKDIR" --coordinator_address="localhost:$PORT"
       --num_processes="$N" --process_id="$i" "$@")
  if [[ $DRY_RUN == 1 ]]; then
    echo "$(show "${cmd[@]}") > $(show "$WORKDIR.process$i.log") 2>&1 &"
    continue
  fi
  "${cmd[@]}" > "$WORKDIR.process$i.log" 2>&1 &
  pids+=($!)
done
[[ $DRY_RUN == 1 ]] && exit 0
status=0
for pid in "${pids[@]}"; do
  while kill -0 "$pid" 2>/dev/null; do  # a trapped signal interrupts `wait`: wait again while it lives
    wait "$pid" || true
  done
  wait "$pid" && rc=0 || rc=$?  # the process's own exit status
  (( rc != 0 )) && status=$rc
done
echo "logs: $WORKDIR.process*.log"
exit $status
