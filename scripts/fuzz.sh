#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each, one after another (libFuzzer, cargo fuzz, nightly).
# Seeds: fuzz/corpus/<target> (committed, small); new inputs go to fuzz/work/<target> (ignored).
# Crashes land in fuzz/artifacts/<target>. Exits non-zero when a target crashes.
#   scripts/fuzz.sh 600            # 10 minutes per target
#   TARGETS="gguf tokenizer" scripts/fuzz.sh 60
set -euo pipefail
secs=${1:?usage: scripts/fuzz.sh SECONDS}
cd "$(dirname "$0")/../fuzz"
targets=${TARGETS:-gguf tokenizer chat_template request}
cargo +nightly fuzz --version >/dev/null 2>&1 || { echo "needs: cargo install cargo-fuzz (and a nightly toolchain)"; exit 2; }
status=0
for t in $targets; do
  feats=(); [ "$t" = request ] && feats=(--features server)
  mkdir -p "work/$t"
  seeds=(); [ -d "corpus/$t" ] && seeds=("corpus/$t")
  echo "== $t: ${secs}s"
  # -timeout: one input may take at most 10 s (template fuel, tokenizer); -rss_limit_mb bounds memory.
  if ! cargo +nightly fuzz run -O "${feats[@]}" "$t" "work/$t" "${seeds[@]}" -- \
      -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -max_len=65536 -print_final_stats=1 \
      2>&1 | tee "work/$t.log" | grep -E '^(#[0-9]+.*(DONE|pulse)|stat::number_of_executed_units|stat::average_exec_per_sec|==[0-9]+==|SUMMARY|Done|panicked)' ; then
    :
  fi
  if grep -qE 'SUMMARY|panicked|deadly signal|Test unit written' "work/$t.log"; then
    echo "!! $t crashed: see fuzz/work/$t.log and fuzz/artifacts/$t"; status=1
  elif ! grep -q '^Done ' "work/$t.log"; then
    echo "!! $t did not run to its end: see fuzz/work/$t.log"; status=1
  fi
done
exit $status
