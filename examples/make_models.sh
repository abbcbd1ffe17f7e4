#!/usr/bin/env sh
# Trains the example models shipped in models/ with kiln itself:
#   iris   — 4 named features, the minimal spec: every training choice is kiln's default
#            (a 64-32 relu MLP, early stopping on validation accuracy, refit on every row)
#   digits — 64 pixel features of 8x8 images, min-max scaling, reshape → conv2d → pool → conv2d → dense
# Data: examples/data/{iris,digits}.csv (scikit-learn's copies of the UCI data sets, CC BY 4.0).
# KILN_BIN: a kiln binary to use instead of building target/release/kiln.
set -eu
cd "$(dirname "$0")/.."
if [ -z "${KILN_BIN:-}" ]; then
  cargo build --release --bin kiln
  KILN_BIN=./target/release/kiln
fi
for m in iris digits; do
  rm -rf "models/$m"
  "$KILN_BIN" train --data "examples/data/$m.csv" --spec "examples/specs/$m.json" --models models --json | tail -n 1
done
