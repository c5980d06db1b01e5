#!/usr/bin/env bash
# The node's HTTP API and the CLI beside a running node.
#   - REST upload of one file (SIZE_MIB, default 1024) with curl -T vs curl
#     -T to nginx's WebDAV PUT on the same disk (an upload sink that stores
#     the file)
#   - REST download of it with curl vs curl from nginx serving the file
#   - COUNT (default 10000) small files stored one `alknet put` each, with a
#     node running (through its socket) vs without one
# RUNS (default 3). Needs root (nginx on a loopback port); installs nginx, bc.
source "$(dirname "$0")/lib.sh"
need_pkg nginx nginx
need_pkg bc bc
build_alknet
SIZE_MIB="${SIZE_MIB:-1024}"; COUNT="${COUNT:-10000}"; RUNS="${RUNS:-3}"
W="$BENCH_DIR/http"; rm -rf "$W"; mkdir -p "$W/www" "$W/nginx"
cleanup() { stop "${ALK_PID:-}"; [ -n "${NGINX_PID:-}" ] && kill "$NGINX_PID" 2>/dev/null; true; }
trap cleanup EXIT
head -c "$((SIZE_MIB << 20))" /dev/urandom > "$W/big"

# nginx: PUT stores into www/, GET serves from it.
start_nginx "$W/nginx" "root $W/www; location / { dav_methods PUT DELETE; create_full_put_path on; }"

export ALKNET_DATA="$W/data"
"$ALKNET" init > /dev/null
ssh-keygen -q -t ed25519 -N '' -f "$W/key"
"$ALKNET" user add bench --admin --key "$W/key.pub" > /dev/null
"$ALKNET" bucket create bench > /dev/null
HTTP_PORT=$(free_port)
"$ALKNET" serve --ssh 127.0.0.1:0 --no-quic --http "127.0.0.1:$HTTP_PORT" > "$W/serve.out" 2> "$W/serve.log" & ALK_PID=$!
for _ in $(seq 100); do grep -q '^http:' "$W/serve.out" 2>/dev/null && break; sleep 0.1; done
TOKEN=$("$ALKNET" token create bench | tail -1)
API="http://127.0.0.1:$HTTP_PORT/api/v1/b/bench/main"
AUTH="Authorization: Bearer $TOKEN"

up_ours=$(median_time "drop_caches" "curl -sf -H '$AUTH' -T '$W/big' '$API/big' -o /dev/null")
up_ref=$(median_time "rm -f '$W/www/big'; drop_caches" "curl -sf -T '$W/big' 'http://127.0.0.1:$NGINX_PORT/big' -o /dev/null")
down_ours=$(median_time "drop_caches" "curl -sf -H '$AUTH' '$API/big' -o /dev/null")
down_ref=$(median_time "drop_caches" "curl -sf 'http://127.0.0.1:$NGINX_PORT/big' -o /dev/null")
cmp <(curl -sf -H "$AUTH" "$API/big") "$W/big"

echo "x" > "$W/small"
many() { for i in $(seq "$COUNT"); do "$ALKNET" put "$W/small" "bench:/$1/f$i" > /dev/null; done; }
beside=$(median_time "" "many beside-\$RANDOM")
stop "$ALK_PID"; wait "$ALK_PID" 2>/dev/null || true; ALK_PID=
alone=$(median_time "" "many alone-\$RANDOM")

echo "SIZE_MIB=$SIZE_MIB COUNT=$COUNT RUNS=$RUNS (medians)"
row "REST upload ${SIZE_MIB} MiB vs nginx PUT" "$up_ours" "$up_ref"
row "REST download ${SIZE_MIB} MiB vs nginx GET" "$down_ours" "$down_ref"
row "$COUNT x alknet put beside a node vs without one" "$beside" "$alone"
