#!/usr/bin/env bash
# fuzz/run.sh: coverage-guided fuzzing of the endpoint's untrusted-input parsers on stable Rust.
#
#   fuzz/run.sh            # 10 minutes
#   SECONDS_TO_RUN=3600 fuzz/run.sh
#
# Builds fuzz_targets/endpoint_input.rs with libFuzzer's coverage instrumentation (the flags
# cargo-fuzz passes, minus the sanitizer, which needs nightly), seeds the corpus with the AWS
# SDK's known-answer token, a StartupMessage and an SSLRequest, and runs it. A crash is saved
# under fuzz/artifacts/ and the script exits non-zero; rerun the binary on that file to see it.
set -euo pipefail
cd "$(dirname "$0")"
SECONDS_TO_RUN=${SECONDS_TO_RUN:-600}
target=$(rustc -vV | sed -n 's/^host: //p')

RUSTFLAGS="--cfg fuzzing -Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares -Cdebug-assertions -Coverflow-checks" \
  cargo build --release --target "$target" --bin endpoint_input

corpus=corpus/endpoint_input
mkdir -p "$corpus" artifacts
printf '%s' 'peccy.dsql.us-east-1.on.aws/?Action=DbConnect&X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=akid%2F20240827%2Fus-east-1%2Fdsql%2Faws4_request&X-Amz-Date=20240827T000000Z&X-Amz-Expires=450&X-Amz-SignedHeaders=host&X-Amz-Signature=f5f2ad764ca5df44045d4ab6ccecba0eef941b0007e5765885a0b6ed3702a3f8' \
  >"$corpus/known-answer-token"
python3 - "$corpus" <<'EOF'
import struct, sys
body = struct.pack('>I', 196608) + b'user\x00admin\x00database\x00postgres\x00application_name\x00x\x00\x00'
open(sys.argv[1] + '/startup', 'wb').write(struct.pack('>I', len(body) + 4) + body)
open(sys.argv[1] + '/ssl-request', 'wb').write(struct.pack('>II', 8, 80877103))
EOF

exec "target/$target/release/endpoint_input" "$corpus" -artifact_prefix=artifacts/ \
  -max_total_time="$SECONDS_TO_RUN" -timeout=5 -rss_limit_mb=2048 -print_final_stats=1
