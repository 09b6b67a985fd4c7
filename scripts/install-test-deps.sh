#!/usr/bin/env bash
# Installs the real servers the test suite runs (Debian packages), once, as root.
# Services never start by themselves here: the tests start their own copies on loopback.
set -euo pipefail
# libnginx-mod-http-ndk + -set-misc: set_escape_uri, as ingress-nginx uses (examples/nginx/ingress-nginx/).
# redis-server also runs the Sentinel tests' sentinels (`redis-server CONF --sentinel`, what redis-sentinel runs).
# systemd: only for `systemd-analyze verify/security` on examples/systemd/ (nothing starts it); curl: examples/machine-clients/curl.md.
# fonts-wqy-microhei: Chinese and Japanese glyphs for the screenshots of those pages (1.6 MB; Arabic comes with DejaVu).
packages=(nginx libnginx-mod-http-ndk libnginx-mod-http-set-misc redis-server slapd ldap-utils samba samba-ad-dc samba-ad-provision winbind krb5-user
          haproxy caddy prometheus prometheus-alertmanager chromium chromium-driver postgresql
          wrk socat iproute2 apache2-utils curl systemd fonts-wqy-microhei)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
command -v npm >/dev/null || missing+=(nodejs npm)  # npm: axe-core below (a NodeSource nodejs brings its own)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "missing Debian packages (run as root to install): ${missing[*]}" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# axe-core, the accessibility audit run in Chromium by tests/test_pages.py (tests/support/accessibility.py):
# one pinned tarball from the npm registry, unpacked once under test-artifacts/cache/ (no node_modules needed).
AXE_VERSION=4.14.1
axe_dir="$(cd "$(dirname "$0")/.." && pwd)/test-artifacts/cache/axe-core-$AXE_VERSION"
if [ ! -s "$axe_dir/axe.min.js" ]; then
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
  (cd "$work" && npm pack --silent "axe-core@$AXE_VERSION" >/dev/null)
  tar -xzf "$work/axe-core-$AXE_VERSION.tgz" -C "$work" package/axe.min.js package/LICENSE
  mkdir -p "$axe_dir"
  mv "$work/package/axe.min.js" "$work/package/LICENSE" "$axe_dir/"
fi

# oidc-provider (panva's certified OpenID Provider), the real provider of tests/test_oidc*.py
# (tests/servers/oidc_provider.py): pinned, installed once with its dependencies under test-artifacts/cache/,
# where the tests copy their ESM script beside node_modules. Node.js 20+ (it needs node:crypto's newer APIs).
OIDC_PROVIDER_VERSION=9.13.3
oidc_dir="$(cd "$(dirname "$0")/.." && pwd)/test-artifacts/cache/oidc-provider-$OIDC_PROVIDER_VERSION"
if [ ! -d "$oidc_dir/node_modules/oidc-provider" ]; then
  mkdir -p "$oidc_dir"
  (cd "$oidc_dir" && npm install --silent --no-audit --no-fund --no-save --prefix . "oidc-provider@$OIDC_PROVIDER_VERSION" >/dev/null)
fi
