#!/usr/bin/env bash
# cargo deny check (deny.toml): licences, sources and bans always; advisories against the
# RustSec database when it can be had.
#
# The advisory database lives in a git repository on GitHub. Where GitHub cannot be reached
# (air-gapped sites, this project's build machines), set APPL_ADVISORY_DB to a local clone of
# it (a plain copy carried in, e.g. `git clone --mirror` on a connected machine); the check then
# runs against that copy and prints its date. Without one, the script tries to fetch, and if that
# fails it says "advisories NOT checked" in so many words and checks the rest.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! cargo deny --version >/dev/null 2>&1; then
  cargo install cargo-deny --locked --version 0.20.2
fi

cargo deny --log-level warn check licenses sources bans

if [[ -n ${APPL_ADVISORY_DB:-} ]]; then
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  sed -e "s|^db-path = .*|db-path = \"$work/dbs\"|" \
      -e "s|^\[advisories\]|[advisories]\ndb-urls = [\"file://$(cd "$APPL_ADVISORY_DB" && pwd)\"]|" \
      deny.toml > "$work/deny.toml"
  echo "deny: advisories against the local copy $APPL_ADVISORY_DB ($(git -C "$APPL_ADVISORY_DB" log -1 --format=%cs 2>/dev/null || echo 'date unknown'))" >&2
  cargo deny --log-level warn check --config "$work/deny.toml" advisories
elif timeout 60 cargo deny --log-level error fetch db >/dev/null 2>&1; then
  cargo deny --log-level warn check advisories
else
  echo "deny: advisories NOT checked: the RustSec advisory database (a git repository on" >&2
  echo "deny: GitHub) cannot be reached from this machine; set APPL_ADVISORY_DB to a local copy." >&2
  echo "deny: licences, sources and bans were checked." >&2
fi
