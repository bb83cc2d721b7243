#!/bin/bash
# Builds wrk2 with one fix (bench/wrk2-eof.patch) as /usr/local/bin/wrk2-eof; use it with WRK2=wrk2-eof.
#
# Stock wrk2 ignores an end-of-file on a connection that still waits for a response: the connection
# never sends again (every 2 s it adds to wrk2's "timeout" count, its missed sends to the corrected
# latency) and wrk2's event loop spins on it, taking most of a core from a 2-core machine. HAProxy
# closes a client's keep-alive connection without a response when the request it had sent over a
# pooled connection to a replica meets that replica's death, and when a reload retires its old
# process; real clients see an error (or retry an idempotent request). Upstream wrk counts such an EOF
# as a read error and reconnects; the patch does the same, and reconnects without an error when the
# connection was idle (a plain keep-alive close). bench/RESULTS.md, issue 6, has the figures with both.
set -euo pipefail
command -v wrk2-eof >/dev/null && { echo "wrk2-eof already installed: $(command -v wrk2-eof)"; exit 0; }
here=$(cd "$(dirname "$0")" && pwd)
src=$(mktemp -d)
# The source tarball beside ../shared/tools/wrk2/build.sh (WRK2_SRC overrides, e.g. from a worktree).
tar xzf "${WRK2_SRC:-$here/../../shared/tools/wrk2/wrk2-src.tar.gz}" -C "$src"
patch -d "$src" -p1 < "$here/wrk2-eof.patch"
make -C "$src" -j"$(nproc)" >/dev/null
install -m 0755 "$src/wrk" /usr/local/bin/wrk2-eof
rm -rf "$src"
echo "installed /usr/local/bin/wrk2-eof"
