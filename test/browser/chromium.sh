#!/usr/bin/env bash
# chromium.sh finds a headless-capable Chromium for the browser test (test/browser) and prints
# its path on stdout; everything else goes to stderr, so
#
#     CHROMIUM_BIN=$(test/browser/chromium.sh)
#
# works. Order: $CHROMIUM_BIN, then `chromium` (Debian's package) on PATH, then
# `chromium-browser` / `google-chrome`. If none is found, it installs Debian's `chromium`
# package with apt-get (as root, or through sudo without a password); the downloaded .deb
# files are kept under <repo>/.cache/apt/ so that a second install on a fresh machine with
# the same cache needs no download. It exits non-zero when no Chromium can be had.
set -euo pipefail

find_chromium() {
	if [[ -n "${CHROMIUM_BIN:-}" && -x "${CHROMIUM_BIN}" ]]; then
		echo "$CHROMIUM_BIN"
		return 0
	fi
	local name
	for name in chromium chromium-browser google-chrome; do
		if command -v "$name" >/dev/null 2>&1; then
			command -v "$name"
			return 0
		fi
	done
	return 1
}

if find_chromium; then
	exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
	echo "chromium.sh: no Chromium found and no apt-get to install Debian's chromium package" >&2
	exit 1
fi
sudo=()
if [[ "$(id -u)" != 0 ]]; then
	if ! sudo -n true 2>/dev/null; then
		echo "chromium.sh: no Chromium found; installing it needs root (or sudo without a password)" >&2
		exit 1
	fi
	sudo=(sudo -n)
fi

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
archives="$repo_root/.cache/apt"
mkdir -p "$archives/partial"
apt_opts=(-o "Dir::Cache::Archives=$archives")
echo "chromium.sh: installing Debian's chromium package (apt-get install chromium)" >&2
export DEBIAN_FRONTEND=noninteractive
# The package lists may be missing (a fresh container) or stale (a 404 for an old version):
# install once, and on failure update the lists and try again.
if ! "${sudo[@]}" apt-get install -y -q --no-install-recommends "${apt_opts[@]}" chromium >&2; then
	"${sudo[@]}" apt-get update -q >&2
	"${sudo[@]}" apt-get install -y -q --no-install-recommends "${apt_opts[@]}" chromium >&2
fi
if ! find_chromium; then
	echo "chromium.sh: apt-get installed chromium, but no chromium is on PATH" >&2
	exit 1
fi
