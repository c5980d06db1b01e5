#!/usr/bin/env bash
# Storage amplification: the same 100 MiB (10 files of 10 MiB) stored in 10
# branches and in 10 buckets. Prints data-dir bytes / 100 MiB (goal <= 1.05).
source "$(dirname "$0")/lib.sh"
need_pkg bc bc
build_alknet
W="$BENCH_DIR/storage"; rm -rf "$W"; mkdir -p "$W/src"
for i in $(seq 0 9); do head -c $((10 << 20)) /dev/urandom > "$W/src/f$i"; done
export ALKNET_DATA="$W/data"
$ALKNET init >/dev/null
for b in $(seq 0 9); do
  $ALKNET bucket create "bucket$b" >/dev/null
  $ALKNET put -r "$W/src" "bucket$b:/data" >/dev/null
  for br in $(seq 1 9); do $ALKNET branch create "bucket$b" "branch$br" >/dev/null; done
  # Each branch also rewrites one file with the same bytes: new versions, no new blobs.
  $ALKNET put "$W/src/f0" "bucket$b@branch9:/data/f0" >/dev/null
done
$ALKNET gc >/dev/null
bytes=$(du -sb "$W/data" | cut -f1)
logical=$((100 << 20))
echo "100 MiB in 10 buckets x 10 branches: data dir $bytes bytes; amplification $(echo "scale=4; $bytes / $logical" | bc -l) (vs 100 for plain copies)"
rm -rf "$W"
