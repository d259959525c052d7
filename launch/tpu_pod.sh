#!/usr/bin/env bash
# Train on a Cloud TPU pod slice: the same command runs on every host; jax.distributed.initialize() finds the
# other hosts by itself (--distributed=auto sees TPU_WORKER_HOSTNAMES).
#
#   TPU=my-v5p-64 ZONE=us-east5-a WORKDIR=gs://bucket/mdm/cc12m_256 CONFIG=configs/cc12m_256.py \
#     launch/tpu_pod.sh --config.mesh.fsdp=8
#
# WORKDIR should be a gs:// path (Orbax writes checkpoints there from all hosts). Extra args go to main.py.
set -euo pipefail
: "${TPU:?set TPU to the TPU VM name}" "${ZONE:?set ZONE}" "${WORKDIR:?set WORKDIR}" "${CONFIG:?set CONFIG}"
REPO_DIR=${REPO_DIR:-~/mdm-jax}
EXTRA=$(printf ' %q' "$@")
gcloud compute tpus tpu-vm ssh "$TPU" --zone "$ZONE" --worker=all --command "
  cd $REPO_DIR && \
  python3 -m mdm_jax.main --config=$CONFIG --workdir=$WORKDIR $EXTRA 2>&1 | tee -a /tmp/mdm_train.log"
