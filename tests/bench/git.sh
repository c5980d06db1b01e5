#!/usr/bin/env bash
# git over SSH: alknet serve vs stock git (git-upload-pack / git-receive-pack
# on a bare repository) behind OpenSSH sshd, on loopback, same git client.
#   - push of the whole history into an empty repository
#   - fresh clone (--bare: transport and indexing, no checkout), pack bytes
#   - incremental fetch of 10 new commits, pack bytes
#   - peak server memory during the clones
# The repository is generated once (COMMITS commits, default 5000, over FILES
# files, default 3000, each commit editing a few lines of EDITS files, so that
# history packs into deltas) and kept in $BENCH_DIR/git-src.
# RUNS (default 3). Needs root (sshd); installs openssh-server, bc, time.
source "$(dirname "$0")/lib.sh"
need_pkg sshd openssh-server
need_pkg bc bc
need_pkg /usr/bin/time time
build_alknet
COMMITS="${COMMITS:-5000}"; FILES="${FILES:-3000}"; EDITS="${EDITS:-3}"
W="$BENCH_DIR/git"; rm -rf "$W"; mkdir -p "$W"
SRC="$BENCH_DIR/git-src-$COMMITS-$FILES"
cleanup() { stop "${SSHD_PID:-}" "${ALK_PID:-}"; }
trap cleanup EXIT

make_git_src "$SRC" "$COMMITS" "$FILES" "$EDITS"
echo "repository: $(git -C "$SRC" rev-list --count main) commits, $(git -C "$SRC" ls-files | wc -l) files," \
  "pack $(du -sm "$SRC/.git/objects/pack" | cut -f1) MiB" >&2

ssh-keygen -q -t ed25519 -N '' -f "$W/key"
start_sshd "$W"
export ALKNET_DATA="$W/data"
HOME="$W" "$ALKNET" init --admin-key "$W/key.pub" >/dev/null
start_alknet "$W"
sleep 0.5

export GIT_SSH_COMMAND="ssh -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR -o BatchMode=yes -o IdentitiesOnly=yes -i $W/key"
REF_URL="ssh://$(whoami)@127.0.0.1:$SSHD_PORT$W/ref.git"
alk_url() { echo "ssh://git@127.0.0.1:$ALK_PORT/bench"; }
reset_ref() { rm -rf "$W/ref.git"; git init -q --bare -b main "$W/ref.git"; }
reset_alk() { "$ALKNET" repo delete bench >/dev/null 2>&1 || true; "$ALKNET" repo create bench >/dev/null; }
pack_bytes() { du -bc "$1"/objects/pack/*.pack | tail -1 | cut -f1; }

# Push of the whole history into an empty repository.
push_ref=$(median_time "reset_ref" "git -C $SRC push -q $REF_URL main")
push_alk=$(median_time "reset_alk" "git -C $SRC push -q \$(alk_url) main")

# Fresh clones. Restart alknet first so its peak memory is the clones'.
kill "$ALK_PID"; wait "$ALK_PID" 2>/dev/null || true
start_alknet "$W"; sleep 0.3
clone_ref=$(median_time "rm -rf $W/c" "git clone -q --bare $REF_URL $W/c")
ref_pack=$(pack_bytes "$W/c")
clone_alk=$(median_time "rm -rf $W/c" "git clone -q --bare \$(alk_url) $W/c")
alk_pack=$(pack_bytes "$W/c")
git -C "$W/c" fsck --no-progress --connectivity-only
alk_rss=$(awk '/VmHWM/ {print $2}' "/proc/$ALK_PID/status")
rm -rf "$W/c"
git clone -q --bare -u "/usr/bin/time -f %M -o $W/ref-rss git-upload-pack" "$REF_URL" "$W/c"
ref_rss=$(tail -1 "$W/ref-rss")

# Incremental fetch: clones of both, then 10 new commits pushed to both.
rm -rf "$W/base-ref" "$W/base-alk" "$W/work"
git clone -q --bare "$REF_URL" "$W/base-ref"
git clone -q --bare "$(alk_url)" "$W/base-alk"
git clone -q "$SRC" "$W/work"
nfiles=$(git -C "$W/work" ls-files | wc -l)
for i in $(seq 10); do
  f=$(git -C "$W/work" ls-files | sed -n "$((i * 97 % nfiles + 1))p")
  echo "edit $i" >> "$W/work/$f"
  git -C "$W/work" -c user.name=b -c user.email=b@x commit -q -am "new $i"
done
git -C "$W/work" push -q "$REF_URL" HEAD:main
git -C "$W/work" push -q "$(alk_url)" HEAD:main
fetch() { git -C "$1" -c fetch.unpackLimit=1 fetch -q "$2" "+refs/heads/*:refs/heads/*"; }
fetch_ref=$(median_time "rm -rf $W/f && cp -r $W/base-ref $W/f" "fetch $W/f $REF_URL")
ref_fetch_pack=$(( $(pack_bytes "$W/f") - $(pack_bytes "$W/base-ref") ))
fetch_alk=$(median_time "rm -rf $W/f && cp -r $W/base-alk $W/f" "fetch $W/f \$(alk_url)")
alk_fetch_pack=$(( $(pack_bytes "$W/f") - $(pack_bytes "$W/base-alk") ))
git -C "$W/f" fsck --no-progress --connectivity-only

echo "git over SSH on loopback, $COMMITS commits x $FILES files, median of $RUNS runs (ratio = alknet / stock git + OpenSSH)"
row "push whole history into an empty repo" "$push_alk" "$push_ref"
row "clone --bare" "$clone_alk" "$clone_ref"
printf '%-44s alknet %8s B   reference %8s B   ratio %sx\n' "  clone pack bytes" "$alk_pack" "$ref_pack" "$(ratio "$alk_pack" "$ref_pack")"
row "fetch of 10 new commits" "$fetch_alk" "$fetch_ref"
printf '%-44s alknet %8s B   reference %8s B   ratio %sx\n' "  fetch pack bytes" "$alk_fetch_pack" "$ref_fetch_pack" "$(ratio "$alk_fetch_pack" "$ref_fetch_pack")"
printf '%-44s alknet %8s KiB reference %8s KiB ratio %sx\n' "peak server memory during clone" "$alk_rss" "$ref_rss" "$(ratio "$alk_rss" "$ref_rss")"
