#!/usr/bin/env bash
# Installs what the browser test of `minigpt4 serve` (crates/minigpt4-serve/tests/serve/browser.rs)
# needs: Debian's Chromium and its driver, Node.js with npm, and playwright-core (npm ci, no
# browser download: the test drives /usr/bin/chromium). Idempotent: installs only what is missing.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
dir="$root/crates/minigpt4-serve/tests/browser"

missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium chromium-driver)
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
if ((${#missing[@]})); then
  if [ "$(id -u)" -eq 0 ]; then sudo=(); elif command -v sudo >/dev/null 2>&1; then sudo=(sudo); else
    echo "install-browser-test-deps: need root (or sudo) to apt-get install ${missing[*]}" >&2
    exit 1
  fi
  echo "install-browser-test-deps: apt-get install ${missing[*]}"
  "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# Up to date when the installed playwright-core is the version the lockfile pins.
want="$(node -p "require('$dir/package-lock.json').packages['node_modules/playwright-core'].version")"
have="$(node -p "try { require('$dir/node_modules/playwright-core/package.json').version } catch (e) { '' }")"
if [ "$want" != "$have" ]; then
  echo "install-browser-test-deps: npm ci in $dir"
  (cd "$dir" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error)
fi
echo "install-browser-test-deps: chromium $(chromium --version 2>/dev/null | awk '{print $2}'), node $(node --version), playwright-core $(node -p "require('$dir/node_modules/playwright-core/package.json').version")"
