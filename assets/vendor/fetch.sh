#!/usr/bin/env bash
# Fetches the console's vendored JavaScript libraries once, from the npm registry, at pinned
# versions, and checks every file kept against its recorded sha256 (assets/vendor/SHA256SUMS).
# The files are committed: building kiln needs neither this script nor the network.
#   assets/vendor/fetch.sh          re-fetch and check (fails if a file differs from SHA256SUMS)
#   assets/vendor/fetch.sh --check  only check the committed files
#   assets/vendor/fetch.sh --record re-fetch and record new sums (after changing a version)
set -euo pipefail
cd "$(dirname "$0")"

# package@version, then the files kept from its tarball (paths inside `package/`).
UPLOT=uplot@1.6.32
UPLOT_FILES=(dist/uPlot.iife.min.js dist/uPlot.min.css LICENSE)

mode="${1:-fetch}"
if [ "$mode" != "--check" ]; then
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  name="${UPLOT%@*}"
  # `npm pack` checks the tarball's integrity against the registry's record.
  (cd "$tmp" && npm pack --silent "$UPLOT" >/dev/null)
  tar -xzf "$tmp"/"$name"-*.tgz -C "$tmp"
  mkdir -p "$name"
  for f in "${UPLOT_FILES[@]}"; do
    cp "$tmp/package/$f" "$name/$(basename "$f")"
  done
  echo "${UPLOT}" > "$name/VERSION"
fi
if [ "$mode" = "--record" ]; then
  find . -type f ! -name SHA256SUMS ! -name fetch.sh | sort | xargs sha256sum > SHA256SUMS
  echo "recorded:"; cat SHA256SUMS
else
  sha256sum --check --quiet SHA256SUMS && echo "vendored files match SHA256SUMS"
fi
