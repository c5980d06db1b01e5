#!/usr/bin/env bash
# Sync between two nodes on loopback vs rsync over OpenSSH (issue 13):
#  1. initial sync of 10,000 files / 1 GiB;
#  2. then a 1 % change (100 files rewritten; EVERY=N rewrites every N-th).
# It prints both nodes' peak RSS after each initial sync (on stderr).
# The 100,000-file case: FILES=100000 SIZE=1024 EVERY=100000 RUNS=1.
# Ours: node A holds the bucket; the clock runs from `sync add` (1) or from
# the last of the change's commits on A (2) until node B shows every file with
# its bytes (`sync status`: nothing missing). Reference: `rsync -a` over
# ssh to an sshd of our own, then again after the same change.
# RUNS (default 3) medians. Needs root (sshd); installs rsync, openssh-server, bc.
source "$(dirname "$0")/lib.sh"
need_pkg rsync rsync
need_pkg sshd openssh-server
need_pkg bc bc
need_pkg b3sum b3sum
build_alknet
FILES="${FILES:-10000}"
SIZE="${SIZE:-107374}" # bytes per file: 10,000 x ~105 KiB = 1 GiB
EVERY="${EVERY:-100}"  # the change rewrites every EVERY-th file (1 %)
W="$BENCH_DIR/sync"
mkdir -p "$W"
SRC="$W/src-$FILES-$SIZE"
if [ ! -d "$SRC" ]; then
  echo "making $FILES files of $SIZE bytes in $SRC (once)" >&2
  python3 - "$SRC" "$FILES" "$SIZE" <<'PY'
import os, sys
src, files, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for i in range(files):
    d = os.path.join(src, f"d{i // 100:03d}")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"f{i:05d}.bin"), "wb") as f:
        f.write(os.urandom(size))
PY
fi
change() { # change DIR: rewrites every EVERY-th file
  python3 - "$1" "$FILES" "$SIZE" "$EVERY" <<'PY'
import os, sys
src, files, size, every = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
for i in range(0, files, every):
    with open(os.path.join(src, f"d{i // 100:03d}", f"f{i:05d}.bin"), "wb") as f:
        f.write(os.urandom(size))
PY
}

# --- reference: rsync over OpenSSH -------------------------------------------
[ -f "$W/key" ] || ssh-keygen -q -t ed25519 -N '' -f "$W/key"
start_sshd "$W"
trap 'stop $SSHD_PID ${A_PID:-} ${B_PID:-}' EXIT
sleep 0.5
RSH="ssh -p $SSHD_PORT -i $W/key -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR"
ref_init=() ref_change=()
for _ in $(seq "$RUNS"); do
  rm -rf "$W/rsrc" "$W/rdst"; cp -a "$SRC" "$W/rsrc"; drop_caches
  t0=$(date +%s.%N); rsync -a -e "$RSH" "$W/rsrc/" "127.0.0.1:$W/rdst/"; t1=$(date +%s.%N)
  ref_init+=("$(echo "$t1 - $t0" | bc -l)")
  change "$W/rsrc"
  t0=$(date +%s.%N); rsync -a -e "$RSH" "$W/rsrc/" "127.0.0.1:$W/rdst/"; t1=$(date +%s.%N)
  ref_change+=("$(echo "$t1 - $t0" | bc -l)")
done

# --- ours: two nodes ---------------------------------------------------------
start_node() { # start_node DIR: sets NODE_PID, NODE_QUIC
  "$ALKNET" --data "$1/data" serve --ssh 127.0.0.1:0 --quic 127.0.0.1:0 --no-http > "$1/serve.out" 2> "$1/serve.log" &
  NODE_PID=$!
  for _ in $(seq 100); do grep -q '^quic:' "$1/serve.out" 2>/dev/null && break; sleep 0.1; done
  NODE_QUIC=$(grep '^quic:' "$1/serve.out" | sed 's/^quic: //')
}
converged() { # converged B_DIR: the last file is there and nothing is missing or behind on B
  "$ALKNET" --data "$1/data" stat "bench:/data/$(printf 'd%03d/f%05d.bin' $(((FILES - 1) / 100)) $((FILES - 1)))" > /dev/null 2>&1 || return 1
  "$ALKNET" --data "$1/data" --json sync status | python3 -c '
import json, sys
s = json.load(sys.stdin)
sys.exit(0 if s and all(l["blobs_missing"] == 0 and l["versions_behind"] == 0 for l in s) else 1)'
}
ours_init=() ours_change=()
for _ in $(seq "$RUNS"); do
  if [ -n "${A_PID:-}" ]; then stop "$A_PID" "$B_PID"; wait "$A_PID" "$B_PID" 2>/dev/null || true; fi
  rm -rf "$W/a" "$W/b"; mkdir -p "$W/a" "$W/b"
  for n in a b; do "$ALKNET" --data "$W/$n/data" init --admin-key "$W/key.pub" > /dev/null; done
  start_node "$W/a"; A_PID=$NODE_PID; A_QUIC=$NODE_QUIC
  start_node "$W/b"; B_PID=$NODE_PID; B_QUIC=$NODE_QUIC
  A=("$ALKNET" --data "$W/a/data"); B=("$ALKNET" --data "$W/b/data")
  "${A[@]}" bucket create bench > /dev/null; "${B[@]}" bucket create bench > /dev/null
  "${A[@]}" put -r "$SRC" bench:/data > /dev/null
  "${A[@]}" peer add b "$B_QUIC" > /dev/null; "${B[@]}" peer add a "$A_QUIC" > /dev/null
  "${A[@]}" grant --peer b bench write > /dev/null; "${B[@]}" grant --peer a bench write > /dev/null
  drop_caches
  t0=$(date +%s.%N)
  "${A[@]}" sync add bench --peer b > /dev/null
  until converged "$W/b"; do sleep 0.2; done
  t1=$(date +%s.%N)
  ours_init+=("$(echo "$t1 - $t0" | bc -l)")
  rss_a=$(awk '/VmHWM/ {print int($2 / 1024)}' "/proc/$A_PID/status")
  rss_b=$(awk '/VmHWM/ {print int($2 / 1024)}' "/proc/$B_PID/status")
  echo "peak RSS after the initial sync: A ${rss_a} MiB, B ${rss_b} MiB" >&2
  cp -a "$SRC" "$W/osrc"; change "$W/osrc"
  changed=()
  for i in $(seq 0 "$EVERY" $((FILES - 1))); do
    changed+=("$(printf 'd%03d/f%05d.bin' $((i / 100)) "$i")")
  done
  # The change lands on A as 100 commits (as a user's edits would); the
  # clock starts when the last is committed, as rsync's starts after the
  # last local change.
  for f in "${changed[@]}"; do "${A[@]}" put "$W/osrc/$f" "bench:/data/$f" > /dev/null; done
  t0=$(date +%s.%N)
  last="${changed[${#changed[@]}-1]}"
  want=$(b3sum --no-names "$W/osrc/$last")
  until [ "$("${B[@]}" stat "bench:/data/$last" 2>/dev/null | sed -n 's/^hash: //p')" = "$want" ] && converged "$W/b"; do sleep 0.1; done
  t1=$(date +%s.%N)
  ours_change+=("$(echo "$t1 - $t0" | bc -l)")
  rm -rf "$W/osrc"
done
med() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {printf "%.3f\n", a[int((NR+1)/2)]}'; }
row "initial sync, $FILES files / $((FILES * SIZE >> 20)) MiB (time; lower is better)" "$(med "${ours_init[@]}")" "$(med "${ref_init[@]}")"
row "after changing ${#changed[@]} of $FILES files" "$(med "${ours_change[@]}")" "$(med "${ref_change[@]}")"
