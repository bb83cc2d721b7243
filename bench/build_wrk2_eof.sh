#!/bin/bash
# Builds wrk2 with one fix (bench/wrk2-eof.patch) as /usr/local/bin/wrk2-eof, and with that fix and an even
# schedule (bench/wrk2-spread.patch) as /usr/local/bin/wrk2-spread; use them with WRK2=wrk2-eof or WRK2=wrk2-spread.
#
# The end-of-file fix. Stock wrk2 ignores an end-of-file on a connection that still waits for a response: the
# connection never sends again (every 2 s it adds to wrk2's "timeout" count, its missed sends to the corrected
# latency) and wrk2's event loop spins on it, taking most of a core from a 2-core machine. HAProxy
# closes a client's keep-alive connection without a response when the request it had sent over a
# pooled connection to a replica meets that replica's death, and when a reload retires its old
# process; real clients see an error (or retry an idempotent request). Upstream wrk counts such an EOF
# as a read error and reconnects; the patch does the same, and reconnects without an error when the
# connection was idle (a plain keep-alive close). bench/RESULTS.md, issue 6, has the figures with both.
#
# The even schedule. Stock wrk2 paces each connection at rate / connections from the moment it connected, and
# connects a thread's connections 5 ms apart: at -R100 -c32 the 32 connections' requests go out within about
# 80 ms and then none for about 240 ms, bursts of 32 at once, not one every 10 ms (measured with a server that
# logs arrivals: gaps of up to 246 ms, against 9.1-11.9 ms with the patch). The patch starts connection k of
# every thread's schedules one k-th of a connection's interval apart, so the requests of a fixed rate arrive
# evenly spaced. Latency still counts from when each request was due.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
tarball="${WRK2_SRC:-$here/../../shared/tools/wrk2/wrk2-src.tar.gz}"  # WRK2_SRC overrides, e.g. from a worktree
build() {  # build NAME PATCH...: wrk2 with the patches, installed as /usr/local/bin/NAME
    local name=$1; shift
    if command -v "$name" >/dev/null; then echo "$name already installed: $(command -v "$name")"; return; fi
    local src
    src=$(mktemp -d)
    tar xzf "$tarball" -C "$src"
    for p in "$@"; do patch -s -d "$src" -p1 < "$here/$p"; done
    make -C "$src" -j"$(nproc)" >"$src.log" 2>&1 || { tail -30 "$src.log"; exit 1; }
    install -m 0755 "$src/wrk" "/usr/local/bin/$name"
    rm -rf "$src" "$src.log"
    echo "installed /usr/local/bin/$name"
}
build wrk2-eof wrk2-eof.patch
build wrk2-spread wrk2-eof.patch wrk2-spread.patch
