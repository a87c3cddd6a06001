#!/usr/bin/env bash
# Builds the CPU packages (.deb and .rpm) in release and checks them: lintian and the package
# contents (tests/check-packages.sh), then, as root, the install test (tests/install-test.sh).
# CI (.ci/run) runs this after scripts/test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/deps.sh --packaging
mapfile -t built < <(packaging/build-packages.sh)
deb=${built[0]}
rpm=${built[1]}
packaging/tests/check-packages.sh "$deb" "$rpm"
if [[ $(id -u) -eq 0 ]]; then
  packaging/tests/install-test.sh "$deb"
else
  echo "test-packages: the install test needs root (it installs and purges the package); run" \
    "packaging/tests/install-test.sh $deb as root" >&2
  exit 1
fi
