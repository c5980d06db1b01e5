#!/usr/bin/env bash
# Git LFS over HTTP: alknet serve vs rudolfs (a Rust LFS server, local disk
# backend) on loopback, the same git-lfs client, objects only:
#   - `git lfs push --all` of one SIZE_MIB file (default 1024) and of COUNT
#     (default 1000) 64 KiB files into a server that has none of them
#   - `git lfs fetch --all` of them into a fresh clone
# rudolfs is not built here: point RUDOLFS at a binary (`cargo install
# rudolfs --locked --root DIR`, about 14 minutes on 2 cores, once).
# RUNS (default 3). Installs git-lfs and bc.
source "$(dirname "$0")/lib.sh"
need_pkg git-lfs git-lfs
need_pkg bc bc
RUDOLFS="${RUDOLFS:-/var/cache/rudolfs/bin/rudolfs}"
[ -x "$RUDOLFS" ] || { echo "no rudolfs at $RUDOLFS (cargo install rudolfs --locked --root /var/cache/rudolfs)" >&2; exit 2; }
build_alknet
SIZE_MIB="${SIZE_MIB:-1024}"; COUNT="${COUNT:-1000}"; RUNS="${RUNS:-3}"
W="$BENCH_DIR/lfs"; rm -rf "$W"; mkdir -p "$W"
cleanup() { stop "${ALK_PID:-}" "${RUDOLFS_PID:-}"; true; }
trap cleanup EXIT
export HOME="$W/home"; mkdir -p "$HOME"
git config --global user.name bench; git config --global user.email bench@example.com
git config --global credential.helper store
git config --global lfs.concurrenttransfers 8
git lfs install --skip-repo > /dev/null

export ALKNET_DATA="$W/data"
"$ALKNET" init > /dev/null
ssh-keygen -q -t ed25519 -N '' -f "$W/key"
"$ALKNET" user add bench --admin --key "$W/key.pub" > /dev/null
HTTP_PORT=$(free_port)
"$ALKNET" serve --ssh 127.0.0.1:0 --no-quic --http "127.0.0.1:$HTTP_PORT" > "$W/serve.out" 2> "$W/serve.log" & ALK_PID=$!
for _ in $(seq 100); do grep -q '^http:' "$W/serve.out" 2>/dev/null && break; sleep 0.1; done
TOKEN=$("$ALKNET" token create bench | tail -1)
echo "http://bench:$TOKEN@127.0.0.1:$HTTP_PORT" > "$HOME/.git-credentials"
RUDOLFS_PORT=$(free_port)
start_rudolfs() {
  rm -rf "$W/rudolfs"; mkdir -p "$W/rudolfs"
  "$RUDOLFS" --host "127.0.0.1:$RUDOLFS_PORT" local --path "$W/rudolfs" > "$W/rudolfs.log" 2>&1 & RUDOLFS_PID=$!
  for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$RUDOLFS_PORT/" && break; sleep 0.1; done
}
start_rudolfs

# One source repository per case, tracked with LFS, pointing at both servers.
make_src() { # make_src NAME: files come from stdin's generator
  local d="$W/$1"
  git init -q -b main "$d"; git -C "$d" lfs track "*.bin" > /dev/null
}
make_src big
head -c "$((SIZE_MIB << 20))" /dev/urandom > "$W/big/big.bin"
make_src many
mkdir -p "$W/many/f"
for i in $(seq "$COUNT"); do head -c 65536 /dev/urandom > "$W/many/f/$i.bin"; done
for c in big many; do
  git -C "$W/$c" add -A; git -C "$W/$c" commit -q -m "$c"
  git init -q --bare -b main "$W/$c-ref.git"
done

ours_url() { echo "http://127.0.0.1:$HTTP_PORT/$1.git"; }
reset_ours() { "$ALKNET" repo delete "$1" > /dev/null 2>&1 || true; "$ALKNET" repo create "$1" > /dev/null; }
# Ours: the git remote is the node itself (its LFS API is at URL/info/lfs).
push_ours() { git -C "$W/$1" lfs push --all "$(ours_url "$1")" > /dev/null 2>&1; }
# rudolfs: the git remote is a local bare repository; lfs.url names rudolfs.
push_ref() { git -C "$W/$1" -c "lfs.url=http://127.0.0.1:$RUDOLFS_PORT/api/bench/$1" lfs push --all "$W/$1-ref.git" > /dev/null 2>&1; }

results=()
for c in big many; do
  up_ours=$(median_time "reset_ours $c" "push_ours $c")
  up_ref=$(median_time "stop \$RUDOLFS_PID; start_rudolfs" "push_ref $c")
  # Both servers keep the objects of their last push; fetch them into fresh clones.
  # (The objects are there already: no pre-push upload.)
  git -C "$W/$c" push -q --no-verify "$(ours_url "$c")" main 2> /dev/null
  git -C "$W/$c" push -q --no-verify "$W/$c-ref.git" main
  fetch_ours() { rm -rf "$W/co"; GIT_LFS_SKIP_SMUDGE=1 git clone -q "$(ours_url "$1")" "$W/co"; git -C "$W/co" lfs fetch --all > /dev/null 2>&1; }
  fetch_ref() {
    rm -rf "$W/co"; GIT_LFS_SKIP_SMUDGE=1 git clone -q "$W/$1-ref.git" "$W/co"
    git -C "$W/co" config lfs.url "http://127.0.0.1:$RUDOLFS_PORT/api/bench/$1"
    git -C "$W/co" lfs fetch --all > /dev/null 2>&1
  }
  down_ours=$(median_time "" "fetch_ours $c")
  (cd "$W/co" && git lfs fsck > /dev/null)
  down_ref=$(median_time "" "fetch_ref $c")
  results+=("$c|$up_ours|$up_ref|$down_ours|$down_ref")
done

echo "Git LFS over HTTP on loopback, median of $RUNS runs (ratio = alknet time / rudolfs time)"
for r in "${results[@]}"; do
  IFS='|' read -r c uo ur do_ dr <<< "$r"
  label=$([ "$c" = big ] && echo "1 x ${SIZE_MIB} MiB" || echo "$COUNT x 64 KiB")
  row "lfs push --all, $label" "$uo" "$ur"
  row "lfs fetch --all, $label" "$do_" "$dr"
done
