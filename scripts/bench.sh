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

# ratio SECONDS: wrk -t1 -c32 against the empty handler of bin/eventbus
# bench baseline and against POST /v1/events (and :batch, 100 events a
# request) in turn, then the api's rate as a fraction of the empty one's.
# Needs wrk (Debian's package); without it, it says so and skips.
ratio() {
	local d=$1 base=${BENCH_BASELINE_ADDR:-127.0.0.1:18090}
	if ! command -v wrk >/dev/null; then
		echo "== HTTP ratio: skipped, wrk is not installed (apt-get install wrk)"
		return
	fi
	bin/eventbus bench baseline --listen "$base" >/dev/null &
	local pid=$!
	local i
	for ((i = 0; i < 50; i++)); do
		curl -s -o /dev/null "http://$base/" && break
		sleep 0.1
	done
	rate() { wrk -t1 -c32 -d"$d" -s "scripts/wrk/$1.lua" "$2" | awk '/^Requests\/sec/ {printf "%d", $2}'; }
	local empty event batch
	empty=$(rate event "http://$base/")
	event=$(rate event "http://localhost${API_HTTP_ADDR:-:8080}/v1/events")
	batch=$(rate batch "http://localhost${API_HTTP_ADDR:-:8080}/v1/events:batch")
	kill "$pid"
	wait "$pid" 2>/dev/null
	if [[ -z $empty || -z $event || -z $batch || $empty == 0 ]]; then
		echo "== HTTP ratio: wrk measured nothing"
		failed=1
		return
	fi
	echo "== HTTP ratio, wrk -t1 -c32 -d$d: empty handler $empty requests/s;" \
		"POST /v1/events $event/s = $(awk "BEGIN {printf \"%.2f\", $event / $empty}") of it;" \
		"POST /v1/events:batch $batch requests/s ($((batch * 100)) events/s) = $(awk "BEGIN {printf \"%.2f\", $batch / $empty}") of it"
}

# bench mqtt measures the edge over MQTT alone, over TCP and WebSocket,
# and beside it the Mosquitto of MOSQUITTO_URL, else the one answering on
# 127.0.0.1:1883 (asked for its version, so that the edge of a run that
# listens there is not taken for it), in the same run, with the same load.
mqtt_urls="ws://localhost${EDGE_HTTP_ADDR:-:8081}/mqtt"
mqtt_addr=${EDGE_MQTT_ADDR:-:11883}
if [[ ${mqtt_addr,,} != off ]]; then
	mqtt_host=${mqtt_addr%:*}
	[[ -z $mqtt_host || $mqtt_host == 0.0.0.0 || $mqtt_host == "[::]" ]] && mqtt_host=localhost
	mqtt_urls="tcp://$mqtt_host:${mqtt_addr##*:},$mqtt_urls"
fi
mosquitto=${MOSQUITTO_URL:-} mosquitto_version=
if [[ -z $mosquitto ]] && command -v mosquitto_sub >/dev/null; then
	mosquitto_version=$(mosquitto_sub -h 127.0.0.1 -p 1883 -t '$SYS/broker/version' -C 1 -W 2 2>/dev/null)
	[[ $mosquitto_version == mosquitto* ]] && mosquitto=tcp://127.0.0.1:1883
fi
if [[ -n $mosquitto ]]; then
	mqtt_urls+=",$mosquitto"
	echo "== bench mqtt: the edge beside the Mosquitto at $mosquitto${mosquitto_version:+ ($mosquitto_version)}"
else
	echo "== bench mqtt: no Mosquitto answers on 127.0.0.1:1883 (or set MOSQUITTO_URL): the edge alone"
fi

if [[ ${BENCH_SMOKE:-} == 1 ]]; then
	ratio 1s
	run bench fanout "${flags[@]}" --subscribers 20 --rate 200 --duration 2s
	run bench fanout "${flags[@]}" --subscribers 20 --rate 200 --duration 2s --pattern
	run bench fanout "${flags[@]}" --subscribers 20 --rate 200 --duration 2s --mqtt
	run bench ingest "${flags[@]}" --concurrency 4 --duration 2s
	run bench ingest "${flags[@]}" --concurrency 2 --duration 2s --grpc="localhost${API_GRPC_ADDR:-:9090}" --batch 500
	run bench ingest "${flags[@]}" --concurrency 2 --duration 2s --grpc="localhost${API_GRPC_ADDR:-:9090}" --batch 500 --patterns 400
	run bench connections "${flags[@]}" --count 300 --settle 1s
	run bench recovery "${flags[@]}" --grpc="localhost${API_GRPC_ADDR:-:9090}" --events 1000
	run bench mqtt --url "$mqtt_urls" --subscribers 20 --rate 50 --duration 2s --settle 500ms --qos 1
	run bench mqtt --url "$mqtt_urls" --subscribers 20 --rate 50 --duration 2s --settle 500ms --version 5
	exit $failed
fi

echo "== machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB, $(uname -sr), $(go version | cut -d' ' -f3)"
run bench fanout "${flags[@]}" --subscribers 1000 --rate 310 --duration 10s
run bench fanout "${flags[@]}" --subscribers 100 --rate 1000 --duration 10s
run bench fanout "${flags[@]}" --subscribers 1000 --rate 100 --duration 5s --ramp
# MQTT subscribers against WebSocket ones, in the same run.
run bench fanout "${flags[@]}" --subscribers 1000 --rate 1000 --duration 5s --mqtt
ratio 8s
run bench ingest "${flags[@]}" --concurrency 64 --duration 10s
run bench ingest "${flags[@]}" --concurrency 8 --duration 10s --grpc="localhost${API_GRPC_ADDR:-:9090}"
# A client away while 50,000 events flow, then catching up.
run bench recovery "${flags[@]}" --grpc="localhost${API_GRPC_ADDR:-:9090}" --events 50000
# The same while attackers hold 20,000 distinct patterns at the edge.
run bench ingest "${flags[@]}" --concurrency 8 --duration 10s --grpc="localhost${API_GRPC_ADDR:-:9090}" --patterns 20000
# 1,000 MQTT subscribers: the edge over TCP and WebSocket, and Mosquitto.
# QoS 0 at 50 messages/s (50,000 deliveries/s offered); QoS 1 at 20/s, as
# past that the load generator's paho clients, acknowledging each
# delivery, fall behind (docs/benchmarks.md).
run bench mqtt --url "$mqtt_urls" --subscribers 1000 --rate 50 --duration 5s --qos 0
run bench mqtt --url "$mqtt_urls" --subscribers 1000 --rate 20 --duration 5s --qos 1
# 50,000 idle connections, or as many as the open-file limit allows: the
# edge and the load generator each hold one descriptor per connection.
nofile=$(ulimit -Hn)
[[ $nofile == unlimited ]] && nofile=1000000
connections=${BENCH_CONNECTIONS:-$((nofile - 500 < 50000 ? nofile - 500 : 50000))}
run bench connections "${flags[@]}" --count "$connections"
exit $failed
