#!/usr/bin/env bash
# Re-fetches the service map's graph-layout library (cytoscape, MIT) from the
# npm registry at its pinned version, checks the tarball against the pinned
# sha512 (the registry's dist.integrity for that version), and writes its
# minified build and LICENSE to crates/weir-agent/ui/vendor/, which the
# binary embeds. The page loads nothing else from anywhere.
#   scripts/vendor-ui.sh          # fetch, verify, write
#   scripts/vendor-ui.sh --check  # fetch, verify, and fail if the committed files differ
set -euo pipefail

NAME=cytoscape
VERSION=3.35.0
INTEGRITY='sha512-sMvBIXiGMnhkCaWz2R06FwF/27MNlS+Tqvi17foO9UhnUg3XGZccKjxsvEqQFAQYMSSZmN5SxYzUYlQ0DOJJ3g=='

root="$(cd "$(dirname "$0")/.." && pwd)"
vendor="$root/crates/weir-agent/ui/vendor"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# The registry's word for this version must be the pinned one.
said="$(npm view "$NAME@$VERSION" dist.integrity)"
[ "$said" = "$INTEGRITY" ] || { echo "registry's integrity for $NAME@$VERSION is $said, pinned $INTEGRITY" >&2; exit 1; }
(cd "$work" && npm pack --silent "$NAME@$VERSION" >/dev/null)
tarball="$work/$NAME-$VERSION.tgz"
got="sha512-$(openssl dgst -sha512 -binary "$tarball" | base64 -w0)"
[ "$got" = "$INTEGRITY" ] || { echo "$tarball hashes to $got, pinned $INTEGRITY" >&2; exit 1; }
tar -xzf "$tarball" -C "$work" package/dist/cytoscape.min.js package/LICENSE

if [ "${1:-}" = "--check" ]; then
  cmp "$work/package/dist/cytoscape.min.js" "$vendor/cytoscape.min.js"
  cmp "$work/package/LICENSE" "$vendor/cytoscape.LICENSE"
  echo "$vendor matches $NAME@$VERSION ($INTEGRITY)"
else
  mkdir -p "$vendor"
  cp "$work/package/dist/cytoscape.min.js" "$vendor/cytoscape.min.js"
  cp "$work/package/LICENSE" "$vendor/cytoscape.LICENSE"
  echo "wrote $NAME@$VERSION ($INTEGRITY) to $vendor"
fi
