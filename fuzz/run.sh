#!/usr/bin/env bash
# Coverage-guided fuzzing of Switchyard with AFL++ (the `afl` crate and
# `cargo afl`, on the stable toolchain): builds the targets instrumented,
# runs each for a bounded time from its seeds in fuzz/corpus/<target>/,
# prints a summary, and exits non-zero when any target crashed.
#
#   fuzz/run.sh [SECONDS_PER_TARGET] [TARGET...]    (default: 60 s, every target)
#   fuzz/run.sh 3600                                (the long run, 1 h a target)
#   fuzz/run.sh 300 h1_response http_proxy
#
# Needs cargo-afl of the afl crate's version (`cargo install cargo-afl
# --version 0.17.1 --locked`) and a C compiler and make for the AFL++ it
# builds once (`cargo afl config --build`, done here when missing).
# Findings go to fuzz/target/afl/<target>/default/{crashes,hangs,queue}/;
# a crash is replayed by the instrumented binary reading it on stdin
# (fuzz/target/release/<target> < FILE), and once fixed it belongs in
# fuzz/regressions/<target>/, which `cargo test --test fuzz_regressions`
# replays. FUZZ_OUT moves the output directory.
set -euo pipefail
cd "$(dirname "$0")"

seconds=${1:-60}
shift || true
all=(h1_response http_proxy request_heads proxy_protocol tls_hello config template consul_answer dns_answer)
if [ "$#" -gt 0 ]; then targets=("$@"); else targets=("${all[@]}"); fi
out=${FUZZ_OUT:-target/afl}

if ! cargo afl --version >/dev/null 2>&1; then
    echo "cargo-afl is missing: cargo install cargo-afl --version 0.17.1 --locked" >&2
    exit 2
fi
# cargo-afl refuses every command but `config` until its AFL++ is built.
if cargo afl whatsup -h 2>&1 | grep -q "was not built"; then
    echo "== cargo afl config --build (AFL++ for this toolchain, once)"
    cargo afl config --build
fi

echo "== cargo afl build --release"
build_start=$(date +%s)
cargo afl build --release --bins
echo "built in $(( $(date +%s) - build_start )) s"

# Not a tuned fuzzing box: no CPU frequency or core-dump tuning, no pinning
# to a core (other work shares this machine), no terminal UI.
export AFL_NO_UI=1 AFL_SKIP_CPUFREQ=1 AFL_NO_AFFINITY=1
export AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 AFL_SKIP_CRASHES=1
export AFL_FORKSRV_INIT_TMOUT=20000

# Per-input time limits (ms): the targets that talk over loopback sockets
# wait on the proxy's and the resolver's own timeouts (hundreds of ms).
timeout_of() {
    case "$1" in
        http_proxy) echo 5000 ;;
        dns_answer | consul_answer) echo 3000 ;;
        *) echo 1000 ;;
    esac
}

failed=0
summary=()
for t in "${targets[@]}"; do
    if [ ! -d "corpus/$t" ]; then
        echo "no seeds for $t in fuzz/corpus/$t" >&2
        exit 2
    fi
    rm -rf "${out:?}/$t"
    mkdir -p "$out/$t"
    dict=()
    case "$t" in
        h1_response | http_proxy | request_heads) dict=(-x dict/http.dict) ;;
        config | template) dict=(-x "dict/$t.dict") ;;
    esac
    echo "== $t: ${seconds} s"
    # -V ends the run after that many seconds; AFL++ exits 0 then.
    cargo afl fuzz -V "$seconds" -t "$(timeout_of "$t")" -m none "${dict[@]}" \
        -i "corpus/$t" -o "$out/$t" -- "target/release/$t" >"$out/$t.log" 2>&1 || {
        echo "afl-fuzz failed for $t (fuzz/$out/$t.log):" >&2
        tail -20 "$out/$t.log" >&2
        failed=1
        summary+=("$(printf '%-15s %s' "$t" "afl-fuzz did not run")")
        continue
    }
    stats="$out/$t/default/fuzzer_stats"
    stat() { awk -F' *: *' -v k="$1" '$1 == k { print $2 }' "$stats"; }
    crashes=$(stat saved_crashes)
    summary+=("$(printf '%-15s %10s %10s %8s %8s %8s %8s %10s' "$t" \
        "$(stat execs_done)" "$(stat execs_per_sec)" "$(stat corpus_count)" \
        "$(stat saved_crashes)" "$(stat saved_hangs)" "$(stat stability)" "$(stat bitmap_cvg)")")
    if [ "${crashes:-0}" != "0" ]; then
        failed=1
        echo "CRASH in $t: fuzz/$out/$t/default/crashes/" >&2
        ls "$out/$t/default/crashes/" >&2
    fi
done

echo
echo "== fuzzing summary (${seconds} s a target)"
printf '%-15s %10s %10s %8s %8s %8s %8s %10s\n' target execs execs/s corpus crashes hangs stability coverage
printf '%s\n' "${summary[@]}"
if [ "$failed" -ne 0 ]; then
    echo "fuzzing found crashes (or a target did not run)" >&2
fi
exit "$failed"
