# schemathesis (PyPI): generates requests from /openapi.json and checks every answer against
# it (tests/it/schemathesis.rs). A pinned version in a venv of its own under the test cache,
# created once.
SCHEMATHESIS_VERSION=4.32.5
_st_venv="$KILN_TEST_CACHE/schemathesis-$SCHEMATHESIS_VERSION"
if [ ! -x "$_st_venv/bin/st" ]; then
  echo "installing schemathesis $SCHEMATHESIS_VERSION into $_st_venv" >&2
  rm -rf "$_st_venv"
  python3 -m venv "$_st_venv"
  "$_st_venv/bin/pip" install -q --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
fi
export KILN_TEST_SCHEMATHESIS="$_st_venv/bin/st"
unset _st_venv
