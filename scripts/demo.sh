#!/usr/bin/env bash
# Builds appl and runs appld in the foreground on the demo model (Gemma 3 270M, Q4_K_M).
# Installs missing build packages and fetches the model first. Stop it with Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/deps.sh
MODEL=$(scripts/fetch-model.sh)
cargo build --workspace --all-targets --locked

if [[ $(id -u) -eq 0 ]]; then
  SOCKET=/run/appl/appld.sock
else
  SOCKET=${XDG_RUNTIME_DIR:-/tmp}/appl/appld.sock
fi
mkdir -p target/demo
cat > target/demo/appld.toml <<TOML
# Written by scripts/demo.sh. The documented default config is packaging/appld.toml.
[server]
listen = "127.0.0.1:50051"
socket = "$SOCKET"

# The demo serves TCP WITHOUT TLS, on 127.0.0.1 only, so that grpcurl -plaintext works out of
# the box; appld warns about it at start and in applctl status. A real site sets [tls] (see
# packaging/appld.toml and SECURITY.md).
[tls]
insecure_plaintext = true

[auth]
# Callers on the plaintext port have no identity: let them run inference, nothing else.
anonymous_roles = ["inference"]

[audit]
dir = "$PWD/target/demo/audit"

[[models]]
id = "gemma-3-270m"
path = "$MODEL"
slots = 8
ctx_per_slot = 2048
chat_template = "gemma"
TOML

echo "demo: appld serves gRPC on 127.0.0.1:50051 (plaintext, inference only) and $SOCKET" >&2
if [[ $SOCKET != /run/appl/appld.sock ]]; then
  echo "demo: in another shell: export APPL_SOCKET=$SOCKET" >&2
fi
echo "demo: try: target/debug/applctl generate \"Once upon a time\"" >&2
exec target/debug/appld --config target/demo/appld.toml
