# Shared helpers for the comparative benchmarks. Source it; needs bash.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
RUNS="${RUNS:-5}"
# The scratch directory: on the same disk as the project unless BENCH_DIR says otherwise.
BENCH_DIR="${BENCH_DIR:-$ROOT/target/bench-scratch}"

build_alknet() {
  (cd "$ROOT" && cargo build --release --quiet)
  ALKNET="${CARGO_TARGET_DIR:-$ROOT/target}/release/alknet"
}

need_pkg() { # need_pkg COMMAND PACKAGE
  command -v "$1" >/dev/null && return
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2"
}

drop_caches() { sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true; }

# median_time SETUP CMD: runs SETUP (untimed) then CMD, RUNS times; prints the
# median wall time of CMD in seconds.
median_time() {
  local setup="$1" cmd="$2" times=()
  for _ in $(seq "$RUNS"); do
    eval "$setup"
    local t0 t1
    t0=$(date +%s.%N)
    eval "$cmd"
    t1=$(date +%s.%N)
    times+=("$(echo "$t1 - $t0" | bc -l)")
  done
  printf '%s\n' "${times[@]}" | sort -g | awk '{a[NR]=$1} END {printf "%.3f\n", a[int((NR+1)/2)]}'
}

ratio() { echo "scale=2; $1 / $2" | bc -l; }

row() { # row LABEL OURS REFERENCE
  printf '%-56s alknet %8ss   reference %8ss   ratio %sx\n' "$1" "$2" "$3" "$(ratio "$2" "$3")"
}

# stop PID...: ends background processes, ignoring ones already gone (a
# failing kill must not end an EXIT trap early under set -e).
stop() { for p in "$@"; do [ -n "$p" ] && { kill "$p" 2>/dev/null || true; }; done; true; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# start_sshd DIR: an OpenSSH sshd of our own on a free loopback port that lets
# DIR/key in (SFTP, and any command such as git-upload-pack). Sets SSHD_PORT
# and SSHD_PID. Needs root and openssh-server; DIR/key must exist.
start_sshd() {
  local d="$1"
  mkdir -p /run/sshd
  [ -f "$d/hostkey" ] || ssh-keygen -q -t ed25519 -N '' -f "$d/hostkey"
  cp "$d/key.pub" "$d/authorized_keys"
  SSHD_PORT=$(free_port)
  cat > "$d/sshd_config" <<CONF
Port $SSHD_PORT
ListenAddress 127.0.0.1
HostKey $d/hostkey
AuthorizedKeysFile $d/authorized_keys
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PidFile none
Subsystem sftp /usr/lib/openssh/sftp-server
CONF
  /usr/sbin/sshd -D -f "$d/sshd_config" -E "$d/sshd.log" & SSHD_PID=$!
}

# start_alknet: `alknet serve` on a free SSH port for $ALKNET_DATA, and a QUIC
# endpoint when ALK_QUIC=1. Sets ALK_PORT, ALK_PID and (with QUIC) ALK_NODE
# (NODE_ID@127.0.0.1:PORT); the log goes to $1/serve.log.
start_alknet() {
  local quic=(--no-quic)
  [ "${ALK_QUIC:-0}" = 1 ] && quic=(--quic 127.0.0.1:0)
  "$ALKNET" serve --ssh 127.0.0.1:0 "${quic[@]}" > "$1/serve.out" 2> "$1/serve.log" & ALK_PID=$!
  for _ in $(seq 100); do grep -q '^ssh:' "$1/serve.out" 2>/dev/null && break; sleep 0.1; done
  ALK_PORT=$(grep '^ssh:' "$1/serve.out" | sed 's/.*://')
  ALK_NODE=$(grep '^quic:' "$1/serve.out" | sed 's/^quic: //' || true)
}

# make_git_src DIR COMMITS FILES EDITS: a repository of COMMITS commits over
# FILES files, each commit editing a few lines of EDITS files so that history
# packs into deltas; made once and kept (it takes a while).
make_git_src() {
  local SRC="$1" COMMITS="$2" FILES="$3" EDITS="$4"
if [ ! -d "$SRC/.git" ]; then
  echo "generating $COMMITS commits over $FILES files in $SRC (once)" >&2
  rm -rf "$SRC"; git init -q -b main "$SRC"
  python3 - "$COMMITS" "$FILES" "$EDITS" <<'PY' | git -C "$SRC" fast-import --quiet
import random, sys
commits, files, edits = map(int, sys.argv[1:])
rnd = random.Random(7)
words = [''.join(rnd.choice('abcdefghijklmnopqrstuvwxyz') for _ in range(rnd.randint(2, 9))) for _ in range(4000)]
def line():
    return ' '.join(rnd.choice(words) for _ in range(rnd.randint(4, 14)))
content = {f"src/m{i // 100:02d}/f{i:04d}.txt": [line() for _ in range(rnd.randint(20, 240))] for i in range(files)}
out = sys.stdout.buffer
def blob(lines):
    data = ('\n'.join(lines) + '\n').encode()
    out.write(b'data %d\n' % len(data) + data + b'\n')
t = 1_600_000_000
for c in range(commits):
    touched = list(content) if c == 0 else rnd.sample(sorted(content), edits)
    for path in touched:
        lines = content[path]
        if c:
            for _ in range(rnd.randint(1, 4)):
                lines[rnd.randrange(len(lines))] = line()
            if rnd.random() < 0.5:
                lines.insert(rnd.randrange(len(lines)), line())
    msg = f"commit {c}".encode()
    out.write(b'commit refs/heads/main\n')
    out.write(b'committer Bench <bench@example.com> %d +0000\n' % (t + c * 60))
    out.write(b'data %d\n%s\n' % (len(msg), msg))
    for path in touched:
        out.write(f'M 100644 inline {path}\n'.encode())
        blob(content[path])
PY
  git -C "$SRC" repack -q -a -d -f --window=10 --depth=50
  git -C "$SRC" reset -q --hard main
fi
}

# start_nginx DIR LOCATIONS: nginx of our own on a free loopback port
# (NGINX_PORT), serving the `location` blocks LOCATIONS; sets NGINX_PID.
# Its pid, log and temp files live in DIR.
start_nginx() {
  local d="$1"; mkdir -p "$d"
  NGINX_PORT=$(free_port)
  cat > "$d/nginx.conf" <<CONF
# Root (the benchmarks run as root): workers reach root's sockets and files.
user root;
worker_processes 2;
daemon off;
pid $d/pid;
error_log $d/error.log;
events { worker_connections 64; }
http {
  access_log off;
  client_body_temp_path $d/body;
  fastcgi_temp_path $d/fastcgi;
  client_max_body_size 0;
  sendfile on;
  server {
    listen 127.0.0.1:$NGINX_PORT;
    $2
  }
}
CONF
  nginx -c "$d/nginx.conf" & NGINX_PID=$!
}
