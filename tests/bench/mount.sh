#!/usr/bin/env bash
# The FUSE mount in local mode (`alknet mount` on a data directory) and in
# remote mode (`alknet mount --node`, over QUIC to `alknet serve` on a second
# data directory, default 1 GiB content cache) against a plain directory on
# the same disk, and against sshfs on alknet's own SFTP (the same server), in
# one run:
#   - sequential write (dd conv=fsync) and read (cold cache) of SIZE_MIB
#   - create SMALL files of 4 KiB, stat them all, read them all
#   - ls -l of a directory of LS_COUNT entries (stored beforehand)
#   - untar of this repository's source tree, then du -s
# SIZE_MIB (default 1024), SMALL (default 10000), LS_COUNT (default 100000),
# RUNS (default 3). Needs root (FUSE); installs sshfs, fuse3 and bc.
source "$(dirname "$0")/lib.sh"
need_pkg bc bc
need_pkg sshfs sshfs
need_pkg fusermount3 fuse3
build_alknet
SIZE_MIB="${SIZE_MIB:-1024}"; SMALL="${SMALL:-10000}"; LS_COUNT="${LS_COUNT:-100000}"
W="$BENCH_DIR/mount"
cleanup() {
  for m in "$W/mnt" "$W/sshfs" "$W/rmnt"; do
    if grep -q " $m fuse" /proc/mounts; then fusermount3 -u -z "$m" 2>/dev/null || umount -l "$m" || true; fi
  done
  stop "${MNT_PID:-}" "${RMNT_PID:-}" "${ALK_PID:-}"
}
trap cleanup EXIT
cleanup
rm -rf "$W"; mkdir -p "$W"/{plain,mnt,sshfs,rmnt,many}
head -c "$((SIZE_MIB << 20))" /dev/urandom > "$W/src.bin"
python3 -c "
import os, sys
for i in range($LS_COUNT): open(os.path.join('$W/many', f'e{i:06d}'), 'w').close()"
(cd "$ROOT" && git archive --format=tar HEAD) > "$W/tree.tar"
ssh-keygen -q -t ed25519 -N '' -f "$W/key"

# The mount: its own data directory, the big directory stored beforehand.
export ALKNET_DATA="$W/data"
HOME="$W" "$ALKNET" init --admin-key "$W/key.pub" >/dev/null
"$ALKNET" bucket create b >/dev/null
"$ALKNET" put -r "$W/many" b:/ >/dev/null
"$ALKNET" mount b "$W/mnt" > "$W/mount.out" 2> "$W/mount.log" & MNT_PID=$!
for _ in $(seq 100); do grep -q '^mounted' "$W/mount.out" 2>/dev/null && break; sleep 0.1; done
# sshfs on alknet's SFTP: a second data directory served by alknet serve.
export ALKNET_DATA="$W/data2"
HOME="$W" "$ALKNET" init --admin-key "$W/key.pub" >/dev/null
"$ALKNET" bucket create b >/dev/null
"$ALKNET" put -r "$W/many" b:/ >/dev/null
ALK_QUIC=1 start_alknet "$W"
"$ALKNET" mount b "$W/rmnt" --node "$ALK_NODE" -i "$W/key" --cache-dir "$W/cache" > "$W/rmount.out" 2> "$W/rmount.log" & RMNT_PID=$!
for _ in $(seq 100); do grep -q '^mounted' "$W/rmount.out" 2>/dev/null && break; sleep 0.1; done
sshfs -p "$ALK_PORT" -o IdentityFile="$W/key" -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null \
  -o LogLevel=ERROR "x@127.0.0.1:/b" "$W/sshfs"
cp -r "$W/many" "$W/plain/many"

seq_write() { dd if="$W/src.bin" of="$1/big" bs=1M conv=fsync status=none; }
seq_read() { drop_caches; cat "$1/big" > /dev/null; }
small_create() {
  python3 -c "
import os
d = '$1/small'; os.makedirs(d, exist_ok=True); data = b'x' * 4096
for i in range($SMALL):
    with open(os.path.join(d, f'f{i:05d}'), 'wb') as f: f.write(data)"
}
small_stat() { python3 -c "
import os
d = '$1/small'
for n in os.listdir(d): os.stat(os.path.join(d, n))"; }
small_read() { drop_caches; cat "$1"/small/* > /dev/null; }
untar() { mkdir -p "$1/tree" && tar -xf "$W/tree.tar" -C "$1/tree"; }

declare -A T
for target in plain mnt rmnt sshfs; do
  d="$W/$target"
  T[$target.write]=$(median_time "rm -f $d/big" "seq_write $d")
  cmp "$W/src.bin" "$d/big"
  T[$target.read]=$(median_time ":" "seq_read $d")
  T[$target.create]=$(median_time "rm -rf $d/small" "small_create $d")
  T[$target.stat]=$(median_time ":" "small_stat $d")
  T[$target.sread]=$(median_time ":" "small_read $d")
  T[$target.ls]=$(median_time ":" "ls -l $d/many > /dev/null")
  T[$target.untar]=$(median_time "rm -rf $d/tree" "untar $d")
  T[$target.du]=$(median_time ":" "du -s $d/tree > /dev/null")
  diff -r "$W/plain/tree" "$d/tree" > /dev/null 2>&1 || [ "$target" = plain ] || echo "warning: $target tree differs" >&2
done

echo "FUSE mount, local mode (mnt) and remote mode over QUIC (remote), vs a plain directory and vs sshfs on alknet SFTP, median of $RUNS runs"
echo "(ratio = mount time / reference time; the goal for sequential I/O is throughput >= 0.7x, i.e. ratio <= 1.43)"
for op in "write:sequential write ${SIZE_MIB} MiB (dd conv=fsync)" "read:sequential read ${SIZE_MIB} MiB (cold)" \
          "create:create $SMALL x 4 KiB" "stat:stat $SMALL files" "sread:read $SMALL files (cold)" \
          "ls:ls -l of $LS_COUNT entries" "untar:untar this repository" "du:du -s of it"; do
  key=${op%%:*}; label=${op#*:}
  row "$label: mnt vs plain" "${T[mnt.$key]}" "${T[plain.$key]}"
  row "$label: remote vs plain" "${T[rmnt.$key]}" "${T[plain.$key]}"
  row "$label: mnt vs sshfs" "${T[mnt.$key]}" "${T[sshfs.$key]}"
  row "$label: remote vs sshfs" "${T[rmnt.$key]}" "${T[sshfs.$key]}"
done
