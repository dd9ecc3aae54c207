#!/usr/bin/env bash
# The standard benchmark scenarios, run against the system scripts/run.sh
# started. BENCH_SMOKE=1 runs each for a moment only, to prove it works.
set -euo pipefail
cd "$(dirname "$0")/.."

eb=bin/eventbus
flags=(--api "http://localhost${API_HTTP_ADDR:-:8080}"
	--edge "http://localhost${EDGE_HTTP_ADDR:-:8081}" --logger "http://localhost${LOGGER_HTTP_ADDR:-:8082}")

if [[ ${BENCH_SMOKE:-} == 1 ]]; then
	$eb bench fanout "${flags[@]}" --subscribers 20 --rate 200 --duration 2s
	$eb bench fanout "${flags[@]}" --subscribers 20 --rate 200 --duration 2s --pattern
	$eb bench ingest "${flags[@]}" --concurrency 4 --duration 2s
	$eb bench ingest "${flags[@]}" --concurrency 2 --duration 2s --grpc="localhost${API_GRPC_ADDR:-:9090}" --batch 500
	$eb bench connections "${flags[@]}" --count 300 --settle 1s
	exit 0
fi

echo "== machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB, $(uname -sr), $(go version | cut -d' ' -f3)"
$eb bench fanout "${flags[@]}" --subscribers 1000 --rate 300 --duration 10s
$eb bench fanout "${flags[@]}" --subscribers 100 --rate 1000 --duration 10s
$eb bench fanout "${flags[@]}" --subscribers 1000 --rate 100 --duration 5s --ramp
$eb bench ingest "${flags[@]}" --concurrency 64 --duration 10s
$eb bench ingest "${flags[@]}" --concurrency 8 --duration 10s --grpc="localhost${API_GRPC_ADDR:-:9090}"
$eb bench connections "${flags[@]}" --count "${BENCH_CONNECTIONS:-15000}"
