#!/usr/bin/env bash
# git over smart HTTP: alknet serve vs Debian's git http-backend behind
# nginx + fcgiwrap, on loopback, same git client, same repository (the one
# git.sh generates: COMMITS commits over FILES files).
#   - push of the whole history into an empty repository
#   - fresh clone (--bare), wall time and pack bytes
# RUNS (default 3). Needs root (nginx on a loopback port); installs nginx,
# fcgiwrap, bc.
source "$(dirname "$0")/lib.sh"
need_pkg nginx nginx
need_pkg /usr/sbin/fcgiwrap fcgiwrap
need_pkg bc bc
build_alknet
COMMITS="${COMMITS:-5000}"; FILES="${FILES:-3000}"; EDITS="${EDITS:-3}"; RUNS="${RUNS:-3}"
W="$BENCH_DIR/git-http"; rm -rf "$W"; mkdir -p "$W/repos" "$W/nginx"
SRC="$BENCH_DIR/git-src-$COMMITS-$FILES"
cleanup() { stop "${ALK_PID:-}" "${NGINX_PID:-}" "${FCGI_PID:-}"; true; }
trap cleanup EXIT
make_git_src "$SRC" "$COMMITS" "$FILES" "$EDITS"
echo "repository: $(git -C "$SRC" rev-list --count main) commits," \
  "pack $(du -sm "$SRC/.git/objects/pack" | cut -f1) MiB" >&2

# The reference: git http-backend as FastCGI behind nginx.
/usr/sbin/fcgiwrap -s "unix:$W/fcgi.sock" & FCGI_PID=$!
for _ in $(seq 50); do [ -S "$W/fcgi.sock" ] && break; sleep 0.1; done
start_nginx "$W/nginx" "location / {
      include /etc/nginx/fastcgi_params;
      fastcgi_pass unix:$W/fcgi.sock;
      fastcgi_param SCRIPT_FILENAME /usr/lib/git-core/git-http-backend;
      fastcgi_param GIT_PROJECT_ROOT $W/repos;
      fastcgi_param GIT_HTTP_EXPORT_ALL \"\";
      fastcgi_param PATH_INFO \$uri;
      fastcgi_param REMOTE_USER bench;
      fastcgi_buffering off;
      fastcgi_request_buffering off;
    }"

export ALKNET_DATA="$W/data"
"$ALKNET" init > /dev/null
ssh-keygen -q -t ed25519 -N '' -f "$W/key"
"$ALKNET" user add bench --admin --key "$W/key.pub" > /dev/null
HTTP_PORT=$(free_port)
"$ALKNET" serve --ssh 127.0.0.1:0 --no-quic --http "127.0.0.1:$HTTP_PORT" > "$W/serve.out" 2> "$W/serve.log" & ALK_PID=$!
for _ in $(seq 100); do grep -q '^http:' "$W/serve.out" 2>/dev/null && break; sleep 0.1; done
TOKEN=$("$ALKNET" token create bench | tail -1)

REF_URL="http://127.0.0.1:$NGINX_PORT/ref.git"
ALK_URL="http://bench:$TOKEN@127.0.0.1:$HTTP_PORT/bench.git"
reset_ref() {
  rm -rf "$W/repos/ref.git"; git init -q --bare -b main "$W/repos/ref.git"
  git -C "$W/repos/ref.git" config http.receivepack true
}
reset_alk() { "$ALKNET" repo delete bench >/dev/null 2>&1 || true; "$ALKNET" repo create bench >/dev/null; }
pack_bytes() { du -bc "$1"/objects/pack/*.pack | tail -1 | cut -f1; }

push_ref=$(median_time "reset_ref" "git -C $SRC push -q $REF_URL main")
push_alk=$(median_time "reset_alk" "git -C $SRC push -q $ALK_URL main")
clone_ref=$(median_time "rm -rf $W/c" "git clone -q --bare $REF_URL $W/c")
ref_pack=$(pack_bytes "$W/c")
clone_alk=$(median_time "rm -rf $W/c" "git clone -q --bare $ALK_URL $W/c")
alk_pack=$(pack_bytes "$W/c")
git -C "$W/c" fsck --no-progress --connectivity-only

echo "git over smart HTTP on loopback, $COMMITS commits x $FILES files, median of $RUNS runs (ratio = alknet / git http-backend + nginx)"
row "push whole history into an empty repo" "$push_alk" "$push_ref"
row "clone --bare" "$clone_alk" "$clone_ref"
printf '%-56s alknet %8s B  reference %8s B  ratio %sx\n' "  clone pack bytes" "$alk_pack" "$ref_pack" "$(ratio "$alk_pack" "$ref_pack")"
