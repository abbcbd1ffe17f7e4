# The official Python gRPC client of the Open Inference Protocol (tritonclient[grpc], from
# PyPI) in a venv of its own under $KILN_TEST_CACHE, created once: tests/it/clients.rs runs
# tests/clients/*.py with it against a real kiln server. Exports KILN_TEST_PYTHON.
KILN_PY_CLIENTS_VENV="$KILN_TEST_CACHE/python-clients-tritonclient-2.73.0"
if [ ! -x "$KILN_PY_CLIENTS_VENV/bin/python" ] \
  || ! "$KILN_PY_CLIENTS_VENV/bin/python" -c 'import tritonclient.grpc' 2>/dev/null; then
  if ! python3 -m venv --help >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null
  fi
  echo "creating $KILN_PY_CLIENTS_VENV (tritonclient[grpc])" >&2
  rm -rf "$KILN_PY_CLIENTS_VENV"
  python3 -m venv "$KILN_PY_CLIENTS_VENV"
  "$KILN_PY_CLIENTS_VENV/bin/pip" install -q --disable-pip-version-check \
    'tritonclient[grpc]==2.73.0'
fi
export KILN_TEST_PYTHON="$KILN_PY_CLIENTS_VENV/bin/python"
