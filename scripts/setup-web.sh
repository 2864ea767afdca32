#!/usr/bin/env bash
# The browser toolchain for `compresstune web` and tests/test_web.py (idempotent; a second run only checks):
#   Debian's Chromium, and Node.js + npm when missing (apt; as root, or with sudo when it is there), then the
#   pinned transformers.js + puppeteer-core in web/node_modules (npm ci from web/package-lock.json).
# ONNXRUNTIME_NODE_INSTALL=skip and --ignore-scripts: onnxruntime-node's install script would download CUDA
# binaries; its CPU binaries ship in the npm package itself. Needs Node.js 18 or newer.
set -euo pipefail
cd "$(dirname "$0")/.."
need=()
command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || [ -n "${CHROMIUM:-}" ] \
  || need+=(chromium)
command -v node >/dev/null 2>&1 || need+=(nodejs)
command -v npm >/dev/null 2>&1 || need+=(npm)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then SUDO=; elif command -v sudo >/dev/null 2>&1; then SUDO=sudo; else
    echo "setup-web: ${need[*]} missing and this user cannot install packages: run as root" \
      "\`apt-get install -y ${need[*]}\`" >&2
    exit 1
  fi
  $SUDO apt-get update -q
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q "${need[@]}"
fi
major=$(node -p 'process.versions.node.split(".")[0]')
[ "$major" -ge 18 ] || { echo "setup-web: Node.js $(node --version) is too old; transformers.js 4 needs 18+" >&2; exit 1; }
want=$(node -p "require('./web/package.json').dependencies['@huggingface/transformers']")
have=$(node -p "try { require('./web/node_modules/@huggingface/transformers/package.json').version } catch { '' }")
if [ "$want" != "$have" ]; then
  (cd web && ONNXRUNTIME_NODE_INSTALL=skip npm ci --ignore-scripts --no-audit --no-fund)
fi
browser=${CHROMIUM:-$(command -v chromium || command -v chromium-browser)}
echo "web toolchain: node $(node --version), transformers.js $want, $("$browser" --version 2>/dev/null | head -1)"
