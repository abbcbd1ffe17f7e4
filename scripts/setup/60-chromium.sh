# Headless Chromium for the console's browser test (tests/it/console.rs): Debian's `chromium`
# and `chromium-driver` packages, driven over WebDriver. Nothing downloads a browser build.
# Does nothing when chromedriver and a chromium binary are already installed.
# Exports KILN_TEST_CHROMEDRIVER (the chromedriver binary) and KILN_TEST_CHROMIUM (the browser).
kiln_chromium_bin() {
  local b
  for b in chromium chromium-browser; do
    command -v "$b" >/dev/null 2>&1 && { command -v "$b"; return 0; }
  done
  return 1
}
if ! command -v chromedriver >/dev/null 2>&1 || ! kiln_chromium_bin >/dev/null; then
  echo "installing chromium and chromium-driver (Debian's packages) for the console's browser test" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    chromium chromium-driver fonts-dejavu-core >/dev/null
fi
KILN_TEST_CHROMEDRIVER="$(command -v chromedriver)"
KILN_TEST_CHROMIUM="$(kiln_chromium_bin)"
export KILN_TEST_CHROMEDRIVER KILN_TEST_CHROMIUM
unset -f kiln_chromium_bin
