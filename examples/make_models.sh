#!/usr/bin/env sh
# Trains the example models shipped in models/ with kiln itself:
#   iris   — 4 named features, fitted standard scaling, Dense 16 relu → Dense 3 softmax
#   digits — 64 pixel features of 8x8 images, min-max scaling, reshape → conv2d → pool → conv2d → dense
# Data: examples/data/{iris,digits}.csv (scikit-learn's copies of the UCI data sets, CC BY 4.0).
set -eu
cd "$(dirname "$0")/.."
cargo build --release --bin kiln
for m in iris digits; do
  rm -rf "models/$m"
  ./target/release/kiln train --data "examples/data/$m.csv" --spec "examples/specs/$m.json" --models models --json | tail -n 1
done
