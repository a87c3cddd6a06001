#!/usr/bin/env bash
# Checks the built packages without installing them: lintian finds no error in the .deb, and
# both the .deb and the .rpm carry the right files, conffile, scripts and library search path.
#
# Usage: packaging/tests/check-packages.sh DEB RPM
set -euo pipefail

deb=${1:?usage: check-packages.sh DEB RPM}
rpm=${2:?usage: check-packages.sh DEB RPM}
failures=0
fail() { printf 'check-packages: FAIL: %s\n' "$*" >&2; failures=$((failures + 1)); }
ok() { printf 'check-packages: ok: %s\n' "$*" >&2; }

# Paths both packages must contain (the .deb lists them as ./path).
required=(
  /usr/bin/appld /usr/bin/applctl
  /etc/appl/appld.toml
  /usr/lib/systemd/system/appld.service
  /usr/lib/sysusers.d/appl.conf /usr/lib/tmpfiles.d/appl.conf
  /usr/lib/appl/libllama.so.0 /usr/lib/appl/libggml.so.0 /usr/lib/appl/libggml-base.so.0
  /usr/lib/appl/libggml-cpu-x64.so /usr/lib/appl/libggml-cpu-haswell.so
  /usr/lib/appl/libggml-cpu-skylakex.so /usr/lib/appl/libggml-cpu-icelake.so
  /usr/lib/appl/libggml-cpu-sapphirerapids.so
  /usr/share/appl/firmware-profiles/h100-sxm.toml
  /usr/share/appl/monitoring/appl-alerts.yml /usr/share/appl/monitoring/appl-dashboard.json
  /usr/share/man/man8/appld.8.gz /usr/share/man/man1/applctl.1.gz
  /usr/share/bash-completion/completions/applctl
  /usr/share/fish/vendor_completions.d/applctl.fish
  /usr/share/doc/appl/INSTALL.md
)

# --- .deb -------------------------------------------------------------------------------------
lintian_out=$(lintian --fail-on error --tag-display-limit 0 "$deb" 2>&1) && lintian_rc=0 || lintian_rc=$?
printf '%s\n' "$lintian_out" | sed 's/^/lintian: /' >&2
if ((lintian_rc == 0)); then ok "lintian: no errors"; else fail "lintian reports errors"; fi

deb_files=$(dpkg-deb --contents "$deb" | awk '{ print $6 }' | sed 's#^\.##')
for p in "${required[@]}" /usr/share/doc/appl/copyright /usr/share/doc/appl/changelog.Debian.gz; do
  grep -qxF "$p" <<<"$deb_files" || fail ".deb lacks $p"
done
ok ".deb contents ($(wc -l <<<"$deb_files") entries)"

ctl=$(mktemp -d)
trap 'rm -rf "$ctl"' EXIT
dpkg-deb --control "$deb" "$ctl"
grep -qxF /etc/appl/appld.toml "$ctl/conffiles" || fail ".deb does not mark /etc/appl/appld.toml as a conffile"
[[ $(dpkg-deb --field "$deb" Package) == appl ]] || fail ".deb is not named appl"
grep -q 'deb-systemd-helper enable appld.service' "$ctl/postinst" || fail "postinst does not enable the unit"
grep -q 'try-restart appld.service' "$ctl/postinst" || fail "postinst does not restart on upgrade"
if grep -Eq 'rm .*(/var/lib/appl|\$state)' "$ctl/postrm" "$ctl/prerm"; then
  fail "a removal script deletes /var/lib/appl"
fi
grep -q 'was kept' "$ctl/postrm" || fail "postrm's purge does not say that the audit log is kept"
ok ".deb control: conffile, scripts"

# The binary finds its libraries in /usr/lib/appl wherever the package is unpacked.
root=$(mktemp -d)
trap 'rm -rf "$ctl" "$root"' EXIT
dpkg-deb --extract "$deb" "$root"
runpath=$(objdump -p "$root/usr/bin/appld" | awk '$1 == "RUNPATH" || $1 == "RPATH" { print $2 }')
[[ $runpath == '$ORIGIN/../lib/appl' ]] || fail "appld's runpath is '$runpath', not \$ORIGIN/../lib/appl"
if missing=$(LD_LIBRARY_PATH= ldd "$root/usr/bin/appld" | grep 'not found'); then
  fail "appld needs libraries that are neither shipped nor on the system: $missing"
fi
ok "appld links to its shipped libraries"

# --- .rpm -------------------------------------------------------------------------------------
[[ $(rpm -qp --queryformat '%{NAME}' "$rpm" 2>/dev/null) == appl ]] || fail ".rpm is not named appl"
rpm_files=$(rpm -qpl "$rpm" 2>/dev/null)
for p in "${required[@]}"; do
  grep -qxF "$p" <<<"$rpm_files" || fail ".rpm lacks $p"
done
ok ".rpm contents ($(wc -l <<<"$rpm_files") files)"
rpm -qp --configfiles "$rpm" 2>/dev/null | grep -qxF /etc/appl/appld.toml \
  || fail ".rpm does not mark /etc/appl/appld.toml as %config"
[[ $(rpm -qp --queryformat '[%{FILEFLAGS:fflags} %{FILENAMES}\n]' "$rpm" 2>/dev/null \
  | awk '$2 == "/etc/appl/appld.toml" { print $1 }') == *n* ]] \
  || fail ".rpm's /etc/appl/appld.toml is not %config(noreplace)"
scripts=$(rpm -qp --scripts "$rpm" 2>/dev/null)
printf '%s\n' "$scripts" | sed 's/^/rpm scripts: /' >&2
grep -q 'systemd-sysusers' <<<"$scripts" || fail ".rpm %post does not create the user"
grep -q 'enable appld.service' <<<"$scripts" || fail ".rpm %post does not enable the unit"
grep -q 'try-restart appld.service' <<<"$scripts" || fail ".rpm does not restart on upgrade"
grep -q 'was kept' <<<"$scripts" || fail ".rpm %postun does not say that the audit log is kept"
if grep -Eq 'rm .*/var/lib/appl' <<<"$scripts"; then fail ".rpm scripts delete /var/lib/appl"; fi
ok ".rpm scripts"

if ((failures)); then
  printf 'check-packages: %d check(s) failed\n' "$failures" >&2
  exit 1
fi
printf 'check-packages: all checks passed for %s and %s\n' "$deb" "$rpm" >&2
