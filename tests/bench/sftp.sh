#!/usr/bin/env bash
# SFTP throughput: alknet serve vs OpenSSH sshd + sftp-server on loopback,
# the same OpenSSH sftp client and cipher for both, in one run.
#   - one file of SIZE_MIB (default 1024): upload, download
#   - SMALL_COUNT (default 2000) files of 16 KiB: put -r, get -r
#   - ls -l of a directory of LS_COUNT (default 10000) entries
# RUNS (default 3). Needs root (sshd); installs openssh-server and bc.
source "$(dirname "$0")/lib.sh"
need_pkg sshd openssh-server
need_pkg bc bc
build_alknet
SIZE_MIB="${SIZE_MIB:-1024}"; SMALL_COUNT="${SMALL_COUNT:-2000}"; LS_COUNT="${LS_COUNT:-10000}"
CIPHER="${CIPHER:-aes256-gcm@openssh.com}"
W="$BENCH_DIR/sftp"; rm -rf "$W"; mkdir -p "$W"/{in,ref,small,many,out}
cleanup() { stop "${SSHD_PID:-}" "${ALK_PID:-}"; }
trap cleanup EXIT

head -c "$((SIZE_MIB << 20))" /dev/urandom > "$W/in/big"
for i in $(seq 1 "$SMALL_COUNT"); do head -c 16384 /dev/urandom > "$W/small/f$i"; done
for i in $(seq 1 "$LS_COUNT"); do : > "$W/many/e$i"; done
ssh-keygen -q -t ed25519 -N '' -f "$W/key"

# OpenSSH: its own sshd serving the reference directory.
cp -r "$W/many" "$W/ref/many"
start_sshd "$W"

# Alknet: a data dir with the same key as admin, the ls directory pre-stored.
export ALKNET_DATA="$W/data"
HOME="$W" "$ALKNET" init --admin-key "$W/key.pub" >/dev/null
"$ALKNET" bucket create bench >/dev/null
"$ALKNET" put -r "$W/many" bench:/ >/dev/null
start_alknet "$W"
sleep 0.5

sftp_to() { # sftp_to PORT BATCHFILE
  sftp -q -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR -o BatchMode=yes \
    -o IdentitiesOnly=yes -i "$W/key" -c "$CIPHER" -P "$1" -b "$2" "$(whoami)@127.0.0.1" >/dev/null
}
batch() { printf '%s\n' "$@" > "$W/b.$$"; echo "$W/b.$$"; }

up_ref=$(median_time "rm -f $W/ref/big" "sftp_to $SSHD_PORT \$(batch 'put $W/in/big $W/ref/big')")
up_alk=$(median_time ":" "sftp_to $ALK_PORT \$(batch 'put $W/in/big /bench/big')")
down_ref=$(median_time "rm -f $W/out/big" "sftp_to $SSHD_PORT \$(batch 'get $W/ref/big $W/out/big')")
down_alk=$(median_time "rm -f $W/out/big" "sftp_to $ALK_PORT \$(batch 'get /bench/big $W/out/big')")
cmp "$W/in/big" "$W/out/big"
sup_ref=$(median_time "rm -rf $W/ref/small" "sftp_to $SSHD_PORT \$(batch 'put -r $W/small $W/ref/small')")
sup_alk=$(median_time "$ALKNET rm -r bench:/small >/dev/null 2>&1 || true" "sftp_to $ALK_PORT \$(batch 'put -r $W/small /bench/small')")
sdown_ref=$(median_time "rm -rf $W/out/small" "sftp_to $SSHD_PORT \$(batch 'get -r $W/ref/small $W/out/small')")
sdown_alk=$(median_time "rm -rf $W/out/small" "sftp_to $ALK_PORT \$(batch 'get -r /bench/small $W/out/small')")
diff -r "$W/small" "$W/out/small"
ls_ref=$(median_time ":" "sftp_to $SSHD_PORT \$(batch 'ls -l $W/ref/many')")
ls_alk=$(median_time ":" "sftp_to $ALK_PORT \$(batch 'ls -l /bench/many')")

mbps() { echo "scale=0; $SIZE_MIB / $1" | bc -l; }
echo "SFTP on loopback, cipher $CIPHER, median of $RUNS runs (ratio = alknet time / OpenSSH time)"
row "upload ${SIZE_MIB} MiB ($(mbps "$up_alk") vs $(mbps "$up_ref") MiB/s)" "$up_alk" "$up_ref"
row "download ${SIZE_MIB} MiB ($(mbps "$down_alk") vs $(mbps "$down_ref") MiB/s)" "$down_alk" "$down_ref"
row "upload $SMALL_COUNT x 16 KiB (put -r)" "$sup_alk" "$sup_ref"
row "download $SMALL_COUNT x 16 KiB (get -r)" "$sdown_alk" "$sdown_ref"
row "ls -l of $LS_COUNT entries" "$ls_alk" "$ls_ref"
