#!/usr/bin/env bash
# automerge 0.12 as a file tree's store (issue: multi-node sync; decision 23):
# ENTRIES (default "100000 1000000") entries as one flat map, each size in
# its own process (peak RSS does not reset):
#   - the whole document synced to an empty peer: messages, the largest,
#     peak RSS;
#   - EDITS (default 50) edits of the document loaded from disk, keys in
#     ascending order, then in random order: ms per edit and RSS.
# A measurement for a design choice, not a race: nothing of ours runs beside
# it (the store's own sync streams rows; see research/sync.md). Built once,
# in its own target directory, never in CI.
set -euo pipefail
cd "$(dirname "$0")/automerge"
export CARGO_TARGET_DIR="${BENCH_TARGET:-/var/cache/alknet-bench/target}"
cargo build --release --quiet
for n in ${ENTRIES:-100000 1000000}; do
  "$CARGO_TARGET_DIR/release/automerge-bench" "$n" "${EDITS:-50}"
done
