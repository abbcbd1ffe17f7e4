# An S3-compatible server for the object-storage tests: moto's server (moto[server], from
# PyPI, pinned) in a venv of its own under $KILN_TEST_CACHE, created once. It speaks the S3
# protocol over plain HTTP; the tests start a private instance on a free loopback port and
# end it when done. Exports KILN_TEST_S3_SERVER: the moto_server command (arguments:
# `-H 127.0.0.1 -p PORT`).
KILN_S3_VENV="$KILN_TEST_CACHE/s3-moto-5.2.5"
if [ ! -x "$KILN_S3_VENV/bin/moto_server" ] \
  || ! "$KILN_S3_VENV/bin/python" -c 'import moto.server' 2>/dev/null; then
  if ! python3 -m venv --help >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null
  fi
  echo "creating $KILN_S3_VENV (moto[server])" >&2
  rm -rf "$KILN_S3_VENV"
  python3 -m venv "$KILN_S3_VENV"
  "$KILN_S3_VENV/bin/pip" install -q --disable-pip-version-check 'moto[server]==5.2.5'
fi
export KILN_TEST_S3_SERVER="$KILN_S3_VENV/bin/moto_server"
