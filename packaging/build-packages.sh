#!/usr/bin/env bash
# Builds the appl packages, a .deb and an .rpm, from this checkout, in release.
#
# Usage: packaging/build-packages.sh [--variant cpu|cuda|rocm]
#   cpu  (default) package `appl`: CPU only, every llama.cpp CPU variant, picked at start.
#   cuda package `appl-cuda`: also CUDA; needs the CUDA toolkit (nvcc) to build.
#   rocm package `appl-rocm`: also ROCm/HIP; needs ROCm to build.
# Environment: CMAKE_CUDA_ARCHITECTURES (e.g. 90) narrows a CUDA build to those GPUs.
#
# Output: target/packaging/<name>_<version>-1_<arch>.deb and <name>-<version>-1.<arch>.rpm, paths
# printed on stdout. Installs the pinned cargo-deb and cargo-generate-rpm if they are missing.
set -euo pipefail
cd "$(dirname "$0")/.."

CARGO_DEB_VERSION=3.8.0
CARGO_GENERATE_RPM_VERSION=0.21.1

log() { printf 'build-packages: %s\n' "$*" >&2; }
die() { printf 'build-packages: error: %s\n' "$*" >&2; exit 1; }

variant=cpu
while (($#)); do
  case "$1" in
    --variant) variant=${2:-}; shift 2 ;;
    --variant=*) variant=${1#--variant=}; shift ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
done
case "$variant" in
  cpu) features=appld/dynamic-backends; name=appl; variant_flag=() ;;
  cuda) features=appld/dynamic-backends,appld/cuda; name=appl-cuda; variant_flag=(--variant cuda) ;;
  rocm) features=appld/dynamic-backends,appld/rocm; name=appl-rocm; variant_flag=(--variant rocm) ;;
  *) die "--variant must be cpu, cuda or rocm, not '$variant'" ;;
esac

ensure_tool() { # cargo subcommand, crate, version
  if ! cargo "$1" --version 2>/dev/null | grep -qF "$3"; then
    log "installing $2 $3"
    cargo install --locked --quiet --version "$3" "$2"
  fi
}
ensure_tool deb cargo-deb "$CARGO_DEB_VERSION"
ensure_tool generate-rpm cargo-generate-rpm "$CARGO_GENERATE_RPM_VERSION"
for tool in strip gzip python3; do
  command -v "$tool" >/dev/null || die "$tool is missing (scripts/deps.sh installs it)"
done

# llama-cpp-sys-2's build script hard-links llama.cpp's lib*.so symlinks (not the files they
# point to) into target/release, its deps/ and examples/, and fails with "File exists" when it
# runs again for another feature set and finds them dangling. They are build outputs: drop them.
find target/release target/release/deps target/release/examples -maxdepth 1 -xtype l \( -name 'libggml*.so' -o -name 'libllama*.so' \) \
  -delete 2>/dev/null || true

log "building $name in release (features: $features)"
# The JSON messages name the folder where llama-cpp-sys-2's build put llama.cpp's libraries.
messages=$(mktemp)
trap 'rm -f "$messages"' EXIT
cargo build --release --locked -p appld -p applctl --features "$features" \
  --message-format=json-render-diagnostics > "$messages"
llama_out=$(python3 - "$messages" <<'PY'
import json, sys
for line in open(sys.argv[1]):
    m = json.loads(line)
    if m.get("reason") == "build-script-executed" and "llama-cpp-sys-2" in m["package_id"]:
        print(m["out_dir"])
PY
)
[[ -d "$llama_out/backends" ]] || die "no llama.cpp backend modules under '$llama_out'"

stage=target/packaging/stage
rm -rf "$stage"
mkdir -p "$stage"/{usr/bin,usr/lib/appl,etc/appl,usr/lib/systemd/system,usr/lib/sysusers.d} \
  "$stage"/{usr/lib/tmpfiles.d,usr/share/appl/firmware-profiles,usr/share/appl/monitoring} \
  "$stage"/{usr/share/man/man1,usr/share/man/man8} \
  "$stage"/{usr/share/bash-completion/completions,usr/share/zsh/vendor-completions} \
  "$stage"/usr/share/fish/vendor_completions.d

for bin in appld applctl; do
  install -m 0755 "target/release/$bin" "$stage/usr/bin/$bin"
  strip --strip-unneeded "$stage/usr/bin/$bin"
done
# llama.cpp and ggml under their sonames (what appld's DT_NEEDED names), and every backend module.
for lib in "$llama_out"/lib/lib*.so; do
  soname=$(objdump -p "$lib" | awk '$1 == "SONAME" { print $2 }')
  install -m 0644 "$lib" "$stage/usr/lib/appl/${soname:-$(basename "$lib")}"
done
for mod in "$llama_out"/backends/libggml-*.so; do
  install -m 0644 "$mod" "$stage/usr/lib/appl/$(basename "$mod")"
done
strip --strip-unneeded "$stage"/usr/lib/appl/*.so*

install -m 0644 packaging/appld.toml "$stage/etc/appl/appld.toml"
install -m 0644 packaging/appld.service "$stage/usr/lib/systemd/system/appld.service"
install -m 0644 packaging/appl.sysusers "$stage/usr/lib/sysusers.d/appl.conf"
install -m 0644 packaging/appl.tmpfiles "$stage/usr/lib/tmpfiles.d/appl.conf"
install -m 0644 firmware-profiles/profiles/*.toml "$stage/usr/share/appl/firmware-profiles/"
# Prometheus alerting rules and the Grafana dashboard, for the site's monitoring.
install -m 0644 packaging/monitoring/appl-alerts.yml packaging/monitoring/appl-dashboard.json \
  "$stage/usr/share/appl/monitoring/"

# Man pages and completions come from the binaries' own clap definitions.
gen() { "$stage/usr/bin/$1" --generate "$2"; }
gen appld man | gzip -9n > "$stage/usr/share/man/man8/appld.8.gz"
gen applctl man | gzip -9n > "$stage/usr/share/man/man1/applctl.1.gz"
for bin in appld applctl; do
  gen "$bin" complete-bash > "$stage/usr/share/bash-completion/completions/$bin"
  gen "$bin" complete-zsh > "$stage/usr/share/zsh/vendor-completions/_$bin"
  gen "$bin" complete-fish > "$stage/usr/share/fish/vendor_completions.d/$bin.fish"
done

out=target/packaging
log "packaging $name"
# dpkg-shlibdeps finds the private libraries the binaries and modules need in the stage.
deb=$(LD_LIBRARY_PATH="$PWD/$stage/usr/lib/appl" \
  cargo deb -p appld --no-build --no-strip "${variant_flag[@]}" --output "$out/" | tail -n 1)
rpm_out=$(cargo generate-rpm -p daemon/appld "${variant_flag[@]}" -o "$out/" 2>&1) \
  || die "cargo generate-rpm failed: $rpm_out"
rpm=$(ls -t "$out"/"$name"-*.rpm | head -n 1)
log "built $deb and $rpm"
printf '%s\n%s\n' "$deb" "$rpm"
