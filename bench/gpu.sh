#!/usr/bin/env bash
# The device check, one call on a GPU machine (see bench/README.md): the MONAI reference loop, then coroseg's
# own train and predict (tracking on, real frames), where the step's time goes (PROFILE=1), a training under
# cProfile (SPEED_PROFILE=1), then the quality sweep for the time left (SWEEP=1). Results in $OUT.
# Carried: .whl (wheels the device image lacks) and .gpudata (the two shared sets and the reference script).
set -uo pipefail
start=$(date +%s)
budget=${BUDGET:-540}                          # seconds this script may take in all
OUT=${OUT:-/tmp/gpu_out}; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || { echo "wheel install failed"; exit 1; }
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1 MLFLOW_DISABLE_TELEMETRY=true PATH=/tmp/site/bin:$PATH
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
echo "== reference (install done at +$(( $(date +%s) - start )) s)"
B=16 H=512 NETS=unet MODES=${MODES:-bf16,bf16_cl_compile} OUT=$OUT \
  timeout "${REF_TIMEOUT:-200}" python3 .gpudata/monai_reference_unet.py 2>&1 | grep -v Warning | tail -8
echo "== coroseg train + predict (at +$(( $(date +%s) - start )) s)"
timeout "${SPEED_TIMEOUT:-300}" python3 bench/gpu_speed.py --data .gpudata/arcade_syntax_val200 --work /tmp/speed \
  --reference "$OUT/anchor_unet.json" --epochs "${SPEED_EPOCHS:-12}" --predict-count "${PREDICT_COUNT:-0}" 2>"$OUT/speed.err" | tee "$OUT/speed.md"
tail -5 "$OUT/speed.err"
if [[ "${PROFILE:-1}" == 1 ]]; then
  echo "== where the training step's time goes (at +$(( $(date +%s) - start )) s)"
  timeout "${PROFILE_TIMEOUT:-200}" python3 bench/gpu_profile.py --data .gpudata/arcade_syntax_val200 \
    ${PROFILE_VARIANTS:+--variants $PROFILE_VARIANTS} 2>"$OUT/profile.err" | tee "$OUT/profile.md"
  tail -3 "$OUT/profile.err"
fi
if [[ "${SPEED_PROFILE:-0}" == 1 ]]; then        # the host's time between training phases, under cProfile
  echo "== coroseg train under cProfile (at +$(( $(date +%s) - start )) s)"
  timeout "${SPEED_PROFILE_TIMEOUT:-150}" python3 bench/gpu_speed.py --data .gpudata/arcade_syntax_val200 \
    --work /tmp/speed_profiled --epochs "${SPEED_PROFILE_EPOCHS:-5}" --profile --no-predict 2>"$OUT/speed_profiled.err" \
    | tee "$OUT/speed_profiled.md"
fi
# The sweep: every CIMAT lever first (short jobs), then ARCADE's default against native 512 px, each given its
# share of the time left; --max-seconds stops new jobs early enough for the running ones to finish.
sweep() {   # $1: share of the time left (percent), then the sweep's own arguments
  local share=$1; shift
  local left=$(( budget - ($(date +%s) - start) ))
  local give=$(( left * share / 100 ))
  echo "== quality sweep $* (${give} of ${left} s left)"
  (( give > 60 )) || return 0
  timeout $(( give - 5 )) python3 bench/quality_sweep.py --compile no --workers "${WORKERS:-4}" \
    --max-seconds $(( give * 55 / 100 )) "$@" 2>>"$OUT/sweep.err" | tail -40
}
if [[ "${SWEEP:-1}" == 1 ]]; then
  sweep 45 --data .gpudata/cimat40_train --out /tmp/sweep_cimat
  sweep 100 --data .gpudata/arcade_syntax_val200 --levers default native width32 --out /tmp/sweep_arcade
  tail -3 "$OUT/sweep.err"
  for d in cimat arcade; do cp /tmp/sweep_$d/results.json "$OUT/sweep_$d.json" 2>/dev/null; done
fi
echo "== done at +$(( $(date +%s) - start )) s"
