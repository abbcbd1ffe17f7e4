# PostgreSQL for the job-store tests: Debian's server binaries (initdb, pg_ctl, postgres).
# The tests start a private throwaway cluster from them (as an unprivileged user when run as
# root: initdb refuses root) on a free loopback port, and remove it when done.
# Exports KILN_TEST_PG_BIN (the directory holding initdb and pg_ctl), unless
# KILN_TEST_DATABASE_URL already names a server to use instead.
if [ -z "${KILN_TEST_DATABASE_URL:-}" ]; then
  kiln_pg_bin() {
    local d
    for d in /usr/lib/postgresql/*/bin; do
      [ -x "$d/initdb" ] && [ -x "$d/pg_ctl" ] && { echo "$d"; return 0; }
    done
    command -v initdb >/dev/null 2>&1 && command -v pg_ctl >/dev/null 2>&1 \
      && { dirname "$(readlink -f "$(command -v initdb)")"; return 0; }
    return 1
  }
  if ! kiln_pg_bin >/dev/null; then
    echo "installing PostgreSQL (Debian's postgresql package) for the job-store tests" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  fi
  KILN_TEST_PG_BIN="$(kiln_pg_bin)"
  export KILN_TEST_PG_BIN
  unset -f kiln_pg_bin
fi
