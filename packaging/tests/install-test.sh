#!/usr/bin/env bash
# Install test: installs the built .deb as a site would, runs the installed appld as user `appl`
# with the installed config and the demo model, and checks that:
#   - the package enabled the unit without starting it, and created the user and folders;
#   - systemd's READY=1 arrives (on a NOTIFY_SOCKET this script reads) only after every model
#     has loaded, with STATUS= progress before it, and STOPPING=1 on SIGTERM;
#   - appld picked a CPU variant and said which; a request through the installed applctl works;
#   - appld exits 0 on SIGTERM and its audit log verifies;
#   - `dpkg --purge` removes the package but leaves /var/lib/appl/audit in place.
#
# Usage: packaging/tests/install-test.sh [DEB]   (DEB defaults to the newest target/packaging/appl_*.deb)
# It must run as root on a machine you can spare (CI, a container): it installs and purges the
# `appl` package and creates the user `appl`.
set -euo pipefail
cd "$(dirname "$0")/../.."

if [[ $(id -u) -ne 0 ]]; then
  echo "install-test: refusing to run: it must be root, because it installs and purges the appl" \
    "package and runs appld as user appl. Run it as root in CI or in a throwaway container." >&2
  exit 2
fi

log() { printf 'install-test: %s\n' "$*" >&2; }
die() { printf 'install-test: FAIL: %s\n' "$*" >&2; exit 1; }

deb=${1:-$(ls -t target/packaging/appl_*.deb 2>/dev/null | head -n 1)}
[[ -f $deb ]] || die "no .deb given and none in target/packaging (run packaging/build-packages.sh)"
model=$(scripts/fetch-model.sh)

if dpkg-query -W -f='${Status}' appl 2>/dev/null | grep -q installed; then
  log "appl is installed from an earlier run; purging it first"
  dpkg --purge appl >/dev/null
fi

work=$(mktemp -d /tmp/appl-install-test.XXXXXX)
daemon_pid=
listener_pid=
cleanup() {
  [[ -n $daemon_pid ]] && kill "$daemon_pid" 2>/dev/null || true
  [[ -n $listener_pid ]] && kill "$listener_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# --- install ----------------------------------------------------------------------------------
log "installing $deb"
dpkg -i "$deb" > "$work/dpkg-install.log" 2>&1 || { cat "$work/dpkg-install.log" >&2; die "dpkg -i failed"; }
grep -q "enabled but not started" "$work/dpkg-install.log" || die "postinst did not say the unit is enabled but not started"
[[ -L /etc/systemd/system/multi-user.target.wants/appld.service ]] || die "appld.service is not enabled"
if [[ -d /run/systemd/system ]] && systemctl is-active --quiet appld.service; then
  die "the first install started appld"
fi
getent passwd appl >/dev/null || die "no user appl"
getent group appl-admin >/dev/null || die "no group appl-admin"
for g in video render; do
  if getent group "$g" >/dev/null; then
    id -nG appl | tr ' ' '\n' | grep -qxF "$g" || die "appl is not in group $g"
  fi
done
for d in /var/lib/appl/audit /var/lib/appl/models /run/appl; do
  [[ $(stat -c %U "$d") == appl ]] || die "$d is missing or not owned by appl"
done
log "installed: unit enabled and not started; user, groups and folders in place"

setpriv --reuid=appl --regid=appl --init-groups \
  /usr/bin/appld --config /etc/appl/appld.toml --check-config >/dev/null \
  || die "the installed config does not pass --check-config"

install -m 0644 "$model" /var/lib/appl/models/
log "demo model copied into /var/lib/appl/models"

# --- run the installed daemon under a notify socket ----------------------------------------------
chmod 0755 "$work"
notify_sock="$work/notify.sock"
python3 - "$notify_sock" "$work/notify.log" "$work/appld.log" <<'PY' &
# Reads systemd notifications. On READY=1 it records how many "model loaded" lines appld had
# logged by then; it stops after STOPPING=1.
import os, socket, sys
path, out, daemon_log = sys.argv[1:4]
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(path)
os.chmod(path, 0o666)
with open(out, "w", buffering=1) as f:
    while True:
        msg = s.recv(4096).decode()
        for line in msg.split("\n"):
            f.write(line + "\n")
        if "READY=1" in msg.split("\n"):
            with open(daemon_log) as d:
                loaded = sum("model loaded" in l for l in d)
            f.write(f"LOADED_AT_READY={loaded}\n")
        if "STOPPING=1" in msg.split("\n"):
            break
PY
listener_pid=$!
for _ in $(seq 100); do [[ -S $notify_sock ]] && break; sleep 0.1; done
[[ -S $notify_sock ]] || die "the notify listener did not start"

log "starting /usr/bin/appld as user appl"
# setpriv execs appld itself as appl (no intermediate process), so $! is appld's pid.
NOTIFY_SOCKET="$notify_sock" setpriv --reuid=appl --regid=appl --init-groups \
  /usr/bin/appld --config /etc/appl/appld.toml 2> "$work/appld.log" &
daemon_pid=$!

for _ in $(seq 600); do
  grep -qx 'READY=1' "$work/notify.log" 2>/dev/null && break
  kill -0 "$daemon_pid" 2>/dev/null || { cat "$work/appld.log" >&2; die "appld exited before READY=1"; }
  sleep 0.5
done
grep -qx 'READY=1' "$work/notify.log" || { cat "$work/appld.log" >&2; die "no READY=1 within 300 s"; }
sleep 0.2 # the listener writes LOADED_AT_READY right after READY=1
models=$(grep -c '^\[\[models\]\]' /etc/appl/appld.toml)
grep -qx "LOADED_AT_READY=$models" "$work/notify.log" \
  || die "READY=1 arrived before all $models model(s) had loaded: $(grep LOADED_AT_READY "$work/notify.log")"
ready_line=$(grep -n '^READY=1' "$work/notify.log" | cut -d: -f1)
loading_line=$(grep -n '^STATUS=loading' "$work/notify.log" | head -n 1 | cut -d: -f1 || true)
[[ -n $loading_line && $loading_line -lt $ready_line ]] || die "no STATUS=loading model ... before READY=1"
log "READY=1 came after all $models model(s) loaded; notifications: $(tr '\n' '|' < "$work/notify.log")"

variant_line=$(grep -m1 'llama.cpp CPU backend:' "$work/appld.log") || die "appld did not say which CPU variant it loaded"
grep -q 'cpu_variant=none' <<<"$variant_line" && die "appld loaded no CPU variant: $variant_line"
log "CPU variant: ${variant_line#*llama.cpp CPU backend: }"

# --- a request through the installed applctl ---------------------------------------------------
/usr/bin/applctl health >/dev/null || die "applctl health: not SERVING"
text=$(/usr/bin/applctl generate "Once upon a time" --max-tokens 8 --temperature 0) \
  || die "applctl generate failed"
[[ -n ${text//[[:space:]]/} ]] || die "applctl generate returned no text"
log "applctl generate through /run/appl/appld.sock: ok (${#text} characters)"
/usr/bin/applctl check > "$work/check.txt" || true
grep -q 'llama.cpp CPU backend' "$work/check.txt" || die "applctl check does not report the CPU backend"

# --- stop -------------------------------------------------------------------------------------
kill -TERM "$daemon_pid"
rc=0
wait "$daemon_pid" || rc=$?
daemon_pid=
((rc == 0)) || { tail -n 20 "$work/appld.log" >&2; die "appld exited $rc on SIGTERM"; }
wait "$listener_pid" || true
listener_pid=
grep -qx 'STOPPING=1' "$work/notify.log" || die "no STOPPING=1 on SIGTERM"
/usr/bin/applctl audit verify --store /var/lib/appl/audit >/dev/null || die "the audit log does not verify"
log "SIGTERM: STOPPING=1, exit 0, audit log verifies"

# --- purge keeps the audit log ------------------------------------------------------------------
audit_files=$(find /var/lib/appl/audit -type f | wc -l)
((audit_files > 0)) || die "the audit log is empty"
dpkg --purge appl > "$work/dpkg-purge.log" 2>&1 || { cat "$work/dpkg-purge.log" >&2; die "dpkg --purge failed"; }
grep -q 'was kept' "$work/dpkg-purge.log" || die "the purge did not say that /var/lib/appl was kept"
[[ ! -e /usr/bin/appld && ! -e /etc/appl/appld.toml ]] || die "the purge left the package's files"
[[ $(find /var/lib/appl/audit -type f | wc -l) -eq $audit_files ]] || die "the purge touched /var/lib/appl/audit"
[[ -f /var/lib/appl/audit/audit-signing.key ]] || die "the purge removed the audit signing key"
log "purged: package files gone, /var/lib/appl/audit kept ($audit_files files)"
log "all checks passed"
