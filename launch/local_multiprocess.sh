#!/usr/bin/env bash
# N processes on one machine talking through jax.distributed (gloo collectives on CPU): a rehearsal of a
# multi-host run. Each process gets DEVICES simulated CPU devices.
#
#   launch/local_multiprocess.sh 2 configs/demo.py:tiny /tmp/mdm_mp
set -euo pipefail
N=${1:?number of processes}
CONFIG=${2:?config}
WORKDIR=${3:?workdir}
shift 3
PORT=${PORT:-$((20000 + RANDOM % 20000))}
DEVICES=${DEVICES:-1}
pids=()
for ((i = 0; i < N; i++)); do
  JAX_PLATFORMS=cpu XLA_FLAGS="--xla_force_host_platform_device_count=$DEVICES" \
    python -m mdm_jax.main --config="$CONFIG" --workdir="$WORKDIR" --coordinator_address="localhost:$PORT" \
    --num_processes="$N" --process_id="$i" "$@" > "$WORKDIR.process$i.log" 2>&1 &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
echo "logs: $WORKDIR.process*.log"
exit $status
