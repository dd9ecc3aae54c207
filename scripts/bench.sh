#!/usr/bin/env bash
# The standard benchmark scenarios, run against the system scripts/run.sh
# started. BENCH_SMOKE=1 runs each for a moment only, to prove it works.
set -uo pipefail
cd "$(dirname "$0")/.."

# Every scenario runs even when one misses its bar; the script fails at the
# end if any did.
failed=0
run() {
	echo "\$ eventbus $*"
	bin/eventbus "$@" || failed=1
}

flags=(--api "http://localhost${API_HTTP_ADDR:-:8080}"
	--edge "http://localhost${EDGE_HTTP_ADDR:-:8081}" --logger "http://localhost${LOGGER_HTTP_ADDR:-:8082}")

if [[ ${BENCH_SMOKE:-} == 1 ]]; then
	run bench fanout "${flags[@]}" --subscribers 20 --rate 200 --duration 2s
	run bench fanout "${flags[@]}" --subscribers 20 --rate 200 --duration 2s --pattern
	run bench fanout "${flags[@]}" --subscribers 20 --rate 200 --duration 2s --mqtt
	run bench ingest "${flags[@]}" --concurrency 4 --duration 2s
	run bench ingest "${flags[@]}" --concurrency 2 --duration 2s --grpc="localhost${API_GRPC_ADDR:-:9090}" --batch 500
	run bench ingest "${flags[@]}" --concurrency 2 --duration 2s --grpc="localhost${API_GRPC_ADDR:-:9090}" --batch 500 --patterns 400
	run bench connections "${flags[@]}" --count 300 --settle 1s
	run bench recovery "${flags[@]}" --grpc="localhost${API_GRPC_ADDR:-:9090}" --events 1000
	exit $failed
fi

echo "== machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB, $(uname -sr), $(go version | cut -d' ' -f3)"
run bench fanout "${flags[@]}" --subscribers 1000 --rate 310 --duration 10s
run bench fanout "${flags[@]}" --subscribers 100 --rate 1000 --duration 10s
run bench fanout "${flags[@]}" --subscribers 1000 --rate 100 --duration 5s --ramp
# MQTT subscribers against WebSocket ones, in the same run.
run bench fanout "${flags[@]}" --subscribers 1000 --rate 1000 --duration 5s --mqtt
run bench ingest "${flags[@]}" --concurrency 64 --duration 10s
run bench ingest "${flags[@]}" --concurrency 8 --duration 10s --grpc="localhost${API_GRPC_ADDR:-:9090}"
# A client away while 50,000 events flow, then catching up.
run bench recovery "${flags[@]}" --grpc="localhost${API_GRPC_ADDR:-:9090}" --events 50000
# The same while attackers hold 20,000 distinct patterns at the edge.
run bench ingest "${flags[@]}" --concurrency 8 --duration 10s --grpc="localhost${API_GRPC_ADDR:-:9090}" --patterns 20000
# 50,000 idle connections, or as many as the open-file limit allows: the
# edge and the load generator each hold one descriptor per connection.
nofile=$(ulimit -Hn)
[[ $nofile == unlimited ]] && nofile=1000000
connections=${BENCH_CONNECTIONS:-$((nofile - 500 < 50000 ? nofile - 500 : 50000))}
run bench connections "${flags[@]}" --count "$connections"
exit $failed
