#!/usr/bin/env bash
# tools.sh installs a Go tool the checks need, at a pinned version, and prints its path.
#
# Usage: .ci/tools.sh staticcheck      (STATICCHECK_VERSION overrides the pin)
#        .ci/tools.sh nats             (NATSCLI_VERSION overrides the pin)
#
# The binary is built with `go install` from the Go module proxy into
# <repo>/.cache/tools/<name>/<version>/ (.cache/ is gitignored) and reused on later runs, so a
# second run does no network access and no build. Only the path goes to stdout:
#
#     STATICCHECK="$(.ci/tools.sh staticcheck)"
#
# Pins. staticcheck v0.8.2 (honnef.co/go/tools) is the newest version the proxy served when it
# was chosen (`go list -m -versions honnef.co/go/tools`); its go.mod says `go 1.26.0`, the
# first line to analyse Go 1.26 code (v0.7.0 was built for Go 1.25). The NATS CLI `nats`
# (github.com/nats-io/natscli) v0.5.1 is the newest the proxy served when it was chosen
# (`go list -m -versions github.com/nats-io/natscli`); test/natscli_test.go runs the README's
# `nats` commands with it.
set -euo pipefail

name="${1:-}"
case "$name" in
staticcheck)
	version="${STATICCHECK_VERSION:-v0.8.2}"
	pkg="honnef.co/go/tools/cmd/staticcheck"
	;;
nats)
	version="${NATSCLI_VERSION:-v0.5.1}"
	pkg="github.com/nats-io/natscli/nats"
	;;
*)
	echo "tools.sh: unknown tool ${name@Q} (known: staticcheck, nats)" >&2
	exit 2
	;;
esac

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest_dir="$repo_root/.cache/tools/$name/$version"
dest="$dest_dir/$name"
if [[ -x "$dest" ]]; then
	echo "$dest"
	exit 0
fi

# Build into a private folder and rename it into place, so two runs at once (the cache is
# shared between worktrees) never see a half-written binary.
mkdir -p "$(dirname "$dest_dir")"
tmp="$(mktemp -d "$(dirname "$dest_dir")/.install.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
echo "tools.sh: installing $pkg@$version" >&2
# Outside the repo, so the tool's dependencies are resolved from its own go.mod, not ours.
(cd "$tmp" && GOBIN="$tmp" GOFLAGS=-buildvcs=false go install "$pkg@$version") >&2
if ! mv -T "$tmp" "$dest_dir" 2>/dev/null && [[ ! -x "$dest" ]]; then
	echo "tools.sh: could not move $name into $dest_dir" >&2
	exit 1
fi
echo "$dest"
