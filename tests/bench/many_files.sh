#!/usr/bin/env bash
# 10,000 files of 4 KiB.
#   put:    alknet put -r DIR (one commit)     vs cp -r DIR to a plain directory
#   ls+stat: alknet ls -l -R of the tree       vs ls -lR of the plain copy
# COUNT (default 10000), RUNS (default 5).
source "$(dirname "$0")/lib.sh"
need_pkg bc bc
build_alknet
COUNT="${COUNT:-10000}"
W="$BENCH_DIR/many"; rm -rf "$W"; mkdir -p "$W/src"
python3 - "$W/src" "$COUNT" <<'PY'
import os, sys
root, count = sys.argv[1], int(sys.argv[2])
for i in range(count):
    d = os.path.join(root, f"d{i // 100:03d}")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"f{i:05d}"), "wb") as f:
        f.write(os.urandom(4096))
PY
export ALKNET_DATA="$W/data"

put=$(median_time "rm -rf $W/data; $ALKNET init >/dev/null; $ALKNET bucket create b >/dev/null" \
  "$ALKNET put -r $W/src b:/ >/dev/null")
cp_=$(median_time "rm -rf $W/plain" "cp -r $W/src $W/plain")
ls_=$(median_time ":" "$ALKNET ls -l -R b:/src >/dev/null")
ls_plain=$(median_time ":" "ls -lR $W/plain >/dev/null")
test "$($ALKNET ls -R b:/src | wc -l)" -eq "$((COUNT + COUNT / 100))"

echo "$COUNT files of 4 KiB, median of $RUNS runs"
row "put -r vs cp -r" "$put" "$cp_"
row "ls -l -R (stat of all) vs ls -lR" "$ls_" "$ls_plain"
rm -rf "$W"
