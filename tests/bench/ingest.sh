#!/usr/bin/env bash
# Ingest and read back one large file.
#   ours:      alknet put FILE (copy into the blob store + BLAKE3 outboard)
#   reference: cp FILE + b3sum of the copy, on the same disk
#   read back: alknet get -o FILE vs cat FILE > FILE
# SIZE_MIB (default 1024), RUNS (default 5).
source "$(dirname "$0")/lib.sh"
need_pkg b3sum b3sum
need_pkg bc bc
build_alknet
SIZE_MIB="${SIZE_MIB:-1024}"
W="$BENCH_DIR/ingest"; rm -rf "$W"; mkdir -p "$W"
head -c "$((SIZE_MIB << 20))" /dev/urandom > "$W/src.bin"
export ALKNET_DATA="$W/data"

put=$(median_time "rm -rf $W/data; $ALKNET init >/dev/null; $ALKNET bucket create b >/dev/null" \
  "$ALKNET put $W/src.bin b:/src.bin >/dev/null")
cp_hash=$(median_time "rm -f $W/copy.bin" "cp $W/src.bin $W/copy.bin && b3sum $W/copy.bin >/dev/null")
get=$(median_time "rm -f $W/out.bin" "$ALKNET get b:/src.bin -o $W/out.bin >/dev/null")
cat_=$(median_time "rm -f $W/out.bin" "cat $W/copy.bin > $W/out.bin")
cmp "$W/src.bin" "$W/out.bin"

echo "ingest of ${SIZE_MIB} MiB, median of $RUNS runs (page cache warm)"
row "put vs cp+b3sum" "$put" "$cp_hash"
row "get vs cat" "$get" "$cat_"
rm -rf "$W"
