#!/usr/bin/env bash
# Time to a streaming reader's first byte, measured from outside (works with any `shoal`
# binary, also ones older than `peer get`'s first_chunk_seconds): a tracker, a seeder limited
# to 16 MiB/s, a getter streaming BLOB to a file; polls the file's size every 5 ms.
#   perf/scripts/first_byte.sh path/to/shoal BLOB [LABEL]
# Prints: LABEL first_byte_s=… complete_s=…   (everything under /dev/shm, removed after)
set -euo pipefail
shoal=$1 blob=$2 label=${3:-run}
dir=$(mktemp -d /dev/shm/first-byte-XXXX)
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$dir"; }
trap cleanup EXIT
"$shoal" tracker --listen 127.0.0.1:0 >"$dir/tracker.out" 2>/dev/null & pids+=($!)
for _ in $(seq 100); do grep -q listening "$dir/tracker.out" && break; sleep 0.05; done
tracker=$(awk '{print $NF}' "$dir/tracker.out")
"$shoal" peer seed --data-dir "$dir/seeder" --tracker "$tracker" --listen 127.0.0.1:0 \
    --egress-limit 16777216 "$blob" >"$dir/seeder.out" 2>/dev/null & pids+=($!)
for _ in $(seq 200); do grep -q seeding "$dir/seeder.out" && break; sleep 0.05; done
digest=$(awk '/seeding/{print $2}' "$dir/seeder.out")
start=$(date +%s.%N)
"$shoal" peer get --data-dir "$dir/getter" --tracker "$tracker" --listen 127.0.0.1:0 \
    --out "$dir/out" "$digest" >"$dir/getter.out" 2>/dev/null & pids+=($!)
first=""
for _ in $(seq 12000); do   # at most about 60 s
    if [ -z "$first" ] && [ -s "$dir/out" ]; then first=$(date +%s.%N); fi
    grep -q '"complete"' "$dir/getter.out" && break
    sleep 0.005
done
end=$(date +%s.%N)
echo "$label first_byte_s=$(echo "$first - $start" | bc) complete_s=$(echo "$end - $start" | bc)"
