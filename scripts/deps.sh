#!/usr/bin/env bash
# Installs the Debian packages appl needs to build and test, if any are missing.
# Needs root (or sudo) only when something is missing. Rust itself (>= 1.88) must come from rustup.
#
# Usage: scripts/deps.sh [--packaging]
#   --packaging  also what building and checking the packages needs: dpkg-dev (cargo-deb's
#                dependency scan), lintian, rpm, and systemd (systemd-analyze, systemd-sysusers).
set -euo pipefail

# prometheus: for `promtool check rules` on the shipped alerting rules.
PKGS=(build-essential cmake clang libclang-dev pkg-config python3 python3-pip python3-venv git prometheus)
if [[ ${1:-} == --packaging ]]; then
  PKGS+=(dpkg-dev lintian rpm systemd)
fi

missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "deps: installing ${missing[*]}" >&2
  SUDO=""
  if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "deps: error: cargo is not installed. Install Rust 1.88 or newer with rustup (https://rustup.rs), then run this again." >&2
  exit 1
fi
ver=$(rustc --version | awk '{print $2}')
if [[ "$(printf '%s\n' 1.88.0 "$ver" | sort -V | head -n1)" != 1.88.0 ]]; then
  echo "deps: error: rustc $ver is too old; appl needs 1.88 or newer (rustup update stable)." >&2
  exit 1
fi
