#!/usr/bin/env bash
# Starts eventbus on localhost for development: Redis (the one answering at
# REDIS_URL, else redis-server, else the embedded server of bin/eventbus),
# then every service as its own process, their logs interleaved and
# prefixed by service. Ctrl-C stops everything.
#
# With arguments, it runs them as a command once every service is ready,
# then stops everything and exits with the command's status:
#   scripts/run.sh bin/eventbus bench fanout --subscribers 100
set -euo pipefail
cd "$(dirname "$0")/.."
commands=$# # 0: run until Ctrl-C

# The services write to the pipes that prefix their lines, so they cannot
# see a terminal: this script decides for them. A person at a terminal
# reads text lines; anything else (CI, a file) gets JSON. LOG_FORMAT set
# by the caller wins.
if [[ -z ${LOG_FORMAT:-} && -t 1 ]]; then
	export LOG_FORMAT=text
fi
# The logger records every event in its files; printing each one here as
# well floods the terminal (10,000 lines for a burst of 10,000 events).
# LOGGER_STDOUT=true make run prints them; bin/eventbus tail follows them.
export LOGGER_STDOUT=${LOGGER_STDOUT:-false}

export REDIS_URL=${REDIS_URL:-redis://localhost:6379/0}
# Channels are the events' own (order:placed), as a consumer written from
# the seed tutorials subscribes to them. To keep a development run apart
# from anything else in a shared Redis, give it a prefix: REDIS_PREFIX=dev:
export REDIS_PREFIX=${REDIS_PREFIX:-}
bin=${EVENTBUS_BIN:-bin} # where make build put the binaries
hostport=${REDIS_URL#*://}
hostport=${hostport#*@}
hostport=${hostport%%/*}
redis_host=${hostport%:*}
redis_port=${hostport##*:}
[[ $redis_port == "$hostport" ]] && redis_port=6379

pids=()
stop_all() {
	trap - INT TERM EXIT
	((${#pids[@]})) && kill -TERM "${pids[@]}" 2>/dev/null || true
	wait 2>/dev/null || true
}
# stopped STATUS: Ctrl-C or SIGTERM. Stopping the services is what a person
# asks with it, so make run ends with 0 (make says no "Error 130"); a
# command run with the services is cut short, so its status says so.
stopped() {
	stop_all
	((commands)) && exit "$1"
	exit 0
}
trap stop_all EXIT
trap 'stopped 130' INT
trap 'stopped 143' TERM

# start NAME CMD...: run CMD with its output prefixed by [NAME]. $! is the
# command itself, so stop_all signals the service, not a pipe.
start() {
	local name=$1
	shift
	"$@" > >(sed -u "s/^/[$name] /") 2>&1 &
	pids+=($!)
}

redis_answers() {
	{
		exec 3<>"/dev/tcp/$redis_host/$redis_port" &&
			printf '*1\r\n$4\r\nPING\r\n' >&3 &&
			IFS= read -r -t 2 reply <&3 &&
			exec 3>&-
	} 2>/dev/null || return 1
	[[ $reply == +PONG* ]]
}

if redis_answers; then
	echo "[run] using the Redis answering at $REDIS_URL"
elif command -v redis-server >/dev/null; then
	echo "[run] starting redis-server on $redis_host:$redis_port"
	start redis redis-server --bind "$redis_host" --port "$redis_port" --save "" --appendonly no
elif [[ -x $bin/eventbus ]]; then
	echo "[run] no redis-server installed: starting the embedded Redis-compatible server on $redis_host:$redis_port (development only)"
	start redis "$bin/eventbus" devredis --addr "$redis_host:$redis_port"
fi
for _ in $(seq 100); do
	redis_answers && break
	sleep 0.1
done
redis_answers || { echo "[run] Redis is not answering at $REDIS_URL" >&2; exit 1; }

# The development secret of edge tokens, kept across runs: the edge checks
# tokens with it (and signs the demo page's), and bin/eventbus token reads
# the same file, so the tokens it mints work here.
if [[ -z ${EDGE_JWT_SECRET:-} ]]; then
	mkdir -p data
	if [[ ! -s data/dev-secret ]]; then
		(umask 077 && head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >data/dev-secret)
	fi
	EDGE_JWT_SECRET=$(<data/dev-secret)
fi
export EDGE_JWT_SECRET

# The development VAPID key pair of Web Push, kept across runs like the
# token secret: a browser's push subscription is made with its public key,
# and a new pair would make every one of them useless.
if [[ -z ${NOTIFY_VAPID_PUBLIC_KEY:-}${NOTIFY_VAPID_PRIVATE_KEY:-} ]]; then
	mkdir -p data
	if [[ ! -s data/dev-vapid ]]; then
		# Written aside and renamed: two first runs at once each read a whole pair.
		(umask 077 && "$bin/eventbus" vapid >"data/dev-vapid.$$" && mv "data/dev-vapid.$$" data/dev-vapid) ||
			{ rm -f "data/dev-vapid.$$"; echo "[run] $bin/eventbus vapid made no VAPID pair: Web Push is off"; }
	fi
	if [[ -s data/dev-vapid ]]; then
		NOTIFY_VAPID_PUBLIC_KEY=$(sed -n 's/^NOTIFY_VAPID_PUBLIC_KEY=//p' data/dev-vapid)
		NOTIFY_VAPID_PRIVATE_KEY=$(sed -n 's/^NOTIFY_VAPID_PRIVATE_KEY=//p' data/dev-vapid)
		export NOTIFY_VAPID_PUBLIC_KEY NOTIFY_VAPID_PRIVATE_KEY
	fi
fi

# dial_addr ADDR: the host:port to reach a service listening on ADDR (no
# host, 0.0.0.0 or [::] is every interface: localhost).
dial_addr() {
	local addr=$1 host=${1%:*}
	case $host in "" | 0.0.0.0 | "[::]") host=localhost ;; esac
	echo "$host:${addr##*:}"
}
# Every address a service listens on, and where this run says it is: the
# banner, the demo page's buttons and Web Push (EDGE_DEMO_API_URL,
# EDGE_DEMO_NOTIFY_URL) and bin/eventbus, which reads the same variables.
export API_HTTP_ADDR=${API_HTTP_ADDR:-:8080} API_GRPC_ADDR=${API_GRPC_ADDR:-:9090}
export LOGGER_HTTP_ADDR=${LOGGER_HTTP_ADDR:-:8082} EDGE_HTTP_ADDR=${EDGE_HTTP_ADDR:-:8081}
export NOTIFICATION_HTTP_ADDR=${NOTIFICATION_HTTP_ADDR:-:8083}
# MQTT over TCP on 11883, clear of a local Mosquitto on 1883, the edge's
# own default (EDGE_MQTT_ADDR=off for none).
export EDGE_MQTT_ADDR=${EDGE_MQTT_ADDR:-:11883}
api=http://$(dial_addr "$API_HTTP_ADDR")
grpc=$(dial_addr "$API_GRPC_ADDR")
logger=http://$(dial_addr "$LOGGER_HTTP_ADDR")
edge=$(dial_addr "$EDGE_HTTP_ADDR")
notification=http://$(dial_addr "$NOTIFICATION_HTTP_ADDR")
mqtt_line= mqtt_try=
if [[ ${EDGE_MQTT_ADDR,,} != off ]]; then
	mqtt=$(dial_addr "$EDGE_MQTT_ADDR")
	mqtt_line="
[run]            mqtt://$mqtt   MQTT 3.1.1/5.0 over TCP (the token is the password)"
	mqtt_try="
[run]       mosquitto_sub -h ${mqtt%:*} -p ${mqtt##*:} -u dev -P \"\$(bin/eventbus token --sub 42 --channels 'order:*')\" -t 'order/#' -v"
fi
# The flags bin/eventbus needs in another shell, where these variables
# are not set: none on the default ports.
cli_api= cli_logger=
[[ $api != http://localhost:8080 ]] && cli_api=" --api $api"
[[ $logger != http://localhost:8082 ]] && cli_logger=" --logger $logger"

start api "$bin/api"
start logger "$bin/logger"
# Demo mode mints tokens for the demo page: for this local run only. Its
# buttons reach this run's API, its Web Push this run's notification
# service. Presence is kept for notify (which the notification service
# routes by) and lobby (the page's "who is online", lobby:demo).
start edge env EDGE_DEMO="${EDGE_DEMO:-true}" EDGE_DEMO_API_URL="${EDGE_DEMO_API_URL:-$api}" \
	EDGE_DEMO_NOTIFY_URL="${EDGE_DEMO_NOTIFY_URL:-$notification}" \
	EDGE_PRESENCE_NAMESPACES="${EDGE_PRESENCE_NAMESPACES:-notify,lobby}" "$bin/edge"
# Without SENDGRID_API_KEY in the environment, emails are only logged.
start notification "$bin/notification"

prefix_line="keys and channels under \"$REDIS_PREFIX\""
[[ -z $REDIS_PREFIX ]] && prefix_line="keys and channels unprefixed (REDIS_PREFIX=dev: keeps them apart)"
email_mode="dry-run, shown below"
[[ -n ${SENDGRID_API_KEY:-} ]] && email_mode="sent through SendGrid"
logger_stdout="; LOGGER_STDOUT=true make run prints each here"
[[ ${LOGGER_STDOUT,,} == true || $LOGGER_STDOUT == 1 ]] && logger_stdout=", each printed below"
cat <<MSG
[run] eventbus is starting:
[run]   Redis    $REDIS_URL, $prefix_line
[run]   API      $api  (gRPC on $grpc)
[run]   logger   $logger/v1/tail  (events recorded in ${LOGGER_DIR:-data/logger}$logger_stdout)
[run]   edge     http://$edge   <- open this: the live demo page
[run]            ws://$edge/mqtt   MQTT 3.1.1/5.0 over WebSocket (the token is the password)$mqtt_line
[run]   notification  $notification/metrics  (emails: $email_mode)
[run] try:  curl -s $api/v1/users -d '{"user_id":"42","email":"ada@example.com","name":"Ada"}'
[run]       curl -s $api/v1/orders/o1/ship -d '{"user_id":"42","carrier":"DHL","tracking_number":"JD01"}'
[run]       bin/eventbus publish${cli_api} order.placed '{"order_id":"o2","user_id":"42","total":990,"currency":"EUR"}'
[run]       bin/eventbus tail${cli_logger}   (every event as it comes)
[run]       bin/eventbus token --sub 42 --channels 'order:*'   (a token this edge accepts: signed with data/dev-secret)$mqtt_try
[run] Ctrl-C stops everything.
MSG

if (($#)); then
	for url in "$api" "$logger" "http://$edge" "$notification"; do
		for _ in $(seq 100); do
			curl -sf "$url/readyz" >/dev/null && break
			sleep 0.1
		done
		curl -sf "$url/readyz" >/dev/null || { echo "[run] $url is not ready" >&2; exit 1; }
	done
	set +e
	# The command talks to this run, whatever EVENTBUS_* say outside it.
	EVENTBUS_API=$api EVENTBUS_GRPC=$grpc EVENTBUS_LOGGER=$logger EVENTBUS_EDGE=http://$edge \
		EVENTBUS_NOTIFICATION=$notification "$@"
	status=$?
	echo "[run] $1 exited with status $status; stopping everything"
	exit "$status"
fi

# Stop everything as soon as one service exits.
set +e
wait -n "${pids[@]}"
status=$?
echo "[run] a process exited with status $status; stopping the others"
exit "$status"
