# The VADER sentiment lexicon (MIT licence), shipped in the PyPI package vaderSentiment
# 3.3.2: about 7,500 English words and emoticons, each with the mean of ten human ratings
# from -4 (most negative) to +4. tests/it/textcls.rs builds a labelled text set from its
# words (positive / negative) to fine-tune a classifier on MiniLM. Downloaded once with pip
# (pinned, sha256 checked, 126 KB), unpacked under $KILN_TEST_CACHE.
# Exports KILN_TEST_VADER: the lexicon file (vader_lexicon.txt).
VADER_VERSION=3.3.2
VADER_SHA256=3bf1d243b98b1afad575b9f22bc2cb1e212b94ff89ca74f8a23a588d024ea311
VADER_DIR="$KILN_TEST_CACHE/vader-$VADER_VERSION"
if [ ! -f "$VADER_DIR/vader_lexicon.txt" ]; then
  if ! python3 -m pip --version >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && apt-get install -y -qq python3-pip >/dev/null
  fi
  vader_tmp="$(mktemp -d "$KILN_TEST_CACHE/vader.XXXXXX")"
  echo "downloading vaderSentiment==$VADER_VERSION (126 KB)" >&2
  python3 -m pip download --quiet --no-deps --dest "$vader_tmp" \
    "vaderSentiment==$VADER_VERSION"
  vader_wheel="$vader_tmp/vaderSentiment-$VADER_VERSION-py2.py3-none-any.whl"
  echo "$VADER_SHA256  $vader_wheel" | sha256sum --check --quiet -
  python3 -m zipfile -e "$vader_wheel" "$vader_tmp/unpacked"
  rm -rf "$VADER_DIR"
  mv "$vader_tmp/unpacked/vaderSentiment" "$VADER_DIR"
  rm -rf "$vader_tmp"
fi
export KILN_TEST_VADER="$VADER_DIR/vader_lexicon.txt"
