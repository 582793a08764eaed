#!/usr/bin/env bash
# Pretraining on a SLURM cluster: one task per GPU, torch.distributed set up from SLURM's variables.
#
#   sbatch --nodes=2 --gpus-per-node=8 --ntasks-per-node=8 --cpus-per-task=10 \
#          pretrain/slurm.sh configs/pretrain/bam_vit_small_16gpu.yaml run.output_dir=/ckpt/bam_vits
#
# Preemption: SLURM sends SIGTERM (with --signal=B:TERM@120 below, two minutes before the time limit);
# every rank finishes its step, rank 0 writes checkpoints/last.pth, and the job is requeued. The
# requeued job continues from that checkpoint (run.resume=auto is the default).
#SBATCH --job-name=bam-dense
#SBATCH --signal=B:TERM@120
#SBATCH --requeue
#SBATCH --output=slurm-%j.out
set -euo pipefail

CONFIG=${1:?usage: sbatch [options] pretrain/slurm.sh CONFIG [KEY.SUB=VALUE ...]}
shift

# sbatch runs a copy of this script from its spool folder: the submitted path (scontrol's Command=) locates the
# checkout (or the installed package's bundled files) and its .venv.
SCRIPT=${BASH_SOURCE[0]}
if [[ -n "${SLURM_JOB_ID:-}" ]] && command -v scontrol >/dev/null; then
  SUBMITTED=$(scontrol show job "$SLURM_JOB_ID" | sed -n 's/^ *Command=\([^ ]*\).*/\1/p' | head -n 1)
  if [[ -f "$SUBMITTED" ]]; then SCRIPT=$SUBMITTED; fi
fi
HERE=$(cd "$(dirname "$SCRIPT")/.." && pwd)
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x "$HERE/.venv/bin/python" ]]; then PYTHON=$HERE/.venv/bin/python; else PYTHON=$(command -v python3); fi
fi
export MASTER_ADDR=${MASTER_ADDR:-$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)}
export MASTER_PORT=${MASTER_PORT:-$((29500 + SLURM_JOB_ID % 1000))}

requeue() {
  echo "bam-dense: SIGTERM received; waiting for the checkpoint, then requeueing job $SLURM_JOB_ID"
  kill -TERM "$SRUN_PID" 2>/dev/null || true
  wait "$SRUN_PID" || true
  scontrol requeue "$SLURM_JOB_ID"
}
trap requeue TERM

srun --kill-on-bad-exit=1 "$PYTHON" "$HERE/pretrain/train.py" --config "$CONFIG" "$@" &
SRUN_PID=$!
wait "$SRUN_PID"
