#!/usr/bin/env bash
# The demo: synthetic frames -> a few epochs of training -> predictions, all recorded in ./mlflow.db.
set -euo pipefail
export MLFLOW_DISABLE_TELEMETRY=true
out="demo_output/$(date +%Y%m%d-%H%M%S)"
mkdir -p "$out"

echo "== 1/3 synthesizing 6 angiograms to predict on ($out/frames)"
coroseg synth --out "$out/frames" --count 6 --size 300 --seed 7

echo "== 2/3 training a UNet for 15 epochs on 80 synthetic frames of 128 px (CPU is fine)"
coroseg train --data synthetic --epochs 15 --image-size 128 --run-name demo-train \
  --config scripts/demo.yaml | tee "$out/train.txt"
train_id=$(awk '/^run_id:/ {print $2}' "$out/train.txt")
model_uri=$(awk '/^model_uri:/ {print $2}' "$out/train.txt")

echo "== 3/3 predicting on the 6 frames with $model_uri"
coroseg predict --model "$model_uri" --input "$out/frames" --output "$out" | tee "$out/predict.txt"
predict_id=$(awk '/^run_id:/ {print $2}' "$out/predict.txt")

cat <<MSG

Done.
  training run:   $train_id   (model: $model_uri)
  inference run:  $predict_id
  predictions:    $out/predictions/comparisons/
Open the MLflow UI:  make ui   (or: .venv/bin/coroseg ui), then browse http://localhost:5000
MSG
