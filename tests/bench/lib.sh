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
  printf '%-44s alknet %8ss   reference %8ss   ratio %sx\n' "$1" "$2" "$3" "$(ratio "$2" "$3")"
}
