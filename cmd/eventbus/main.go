// Command eventbus is the command-line tool of the eventbus suite: publish
// events, tail the logger, read bus statistics and history, list and retry
// dead letters, run a development Redis.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"
)

const usage = `eventbus is the command-line tool of the eventbus suite.

Usage:
  eventbus publish [flags] TYPE JSON    publish an event through the API
  eventbus tail [flags] [PATTERN]       follow the logger, like tail -f
  eventbus stats [flags]                show channels and subscribers
  eventbus history [flags] PATTERN      print the recorded events of a pattern
  eventbus dead-letters list|retry      list the emails never sent, or send them again
  eventbus token --sub ID [flags]       mint a development token for the edge
  eventbus revoke --jti ID | --sub ID   revoke edge tokens on every edge
  eventbus vapid                        print a new VAPID key pair for Web Push
  eventbus bench SCENARIO [flags]       measure a running system: fanout, ingest, connections, recovery, mqtt
  eventbus devredis [flags]             run an embedded Redis-compatible server (development only)
  eventbus version                      print the version, commit and Go version (also --version)

Run 'eventbus COMMAND --help' for the flags of a command.
Addresses come from flags, else from EVENTBUS_API, EVENTBUS_LOGGER,
EVENTBUS_EDGE, EVENTBUS_NOTIFICATION (base URLs) and EVENTBUS_GRPC
(host:port), else from the addresses the services listen on, as make run
and the services read them: API_HTTP_ADDR (:8080), LOGGER_HTTP_ADDR
(:8082), EDGE_HTTP_ADDR (:8081), NOTIFICATION_HTTP_ADDR (:8083) and
API_GRPC_ADDR (:9090). The API key comes from --api-key or EVENTBUS_API_KEY.
A service that does not answer within --connect-timeout (5s) is an error.
`

// errUsage asks for the usage text, with exit status 2.
var errUsage = errors.New("usage")

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr)
	stop()
	switch {
	case err == nil, errors.Is(err, flag.ErrHelp):
	case errors.Is(err, errUsage):
		os.Exit(2)
	default:
		fmt.Fprintf(os.Stderr, "eventbus: %v\n", err)
		os.Exit(1)
	}
}

// env carries what every command needs.
type env struct {
	getenv func(string) string
	stdout io.Writer
	stderr io.Writer
}

type command struct {
	summary string
	run     func(ctx context.Context, e env, args []string) error
}

var commands = map[string]command{
	"publish":      {"publish an event through the API", runPublish},
	"tail":         {"follow the logger", runTail},
	"stats":        {"show channels and subscribers", runStats},
	"history":      {"print the recorded events of a pattern", runHistory},
	"dead-letters": {"list or resend the emails never sent", runDeadLetters},
	"token":        {"mint a development token for the edge", runToken},
	"revoke":       {"revoke edge tokens on every edge", runRevoke},
	"vapid":        {"print a new VAPID key pair for Web Push", runVapid},
	"version":      {"print the version of this build", runVersion},
	"bench":        {"measure a running system", runBench},
	"devredis":     {"run an embedded Redis-compatible server", runDevRedis},
}

func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(stdout, usage)
		if len(args) == 0 {
			return errUsage
		}
		return nil
	}
	if args[0] == "--version" || args[0] == "-version" {
		args = []string{"version"}
	}
	cmd, ok := commands[args[0]]
	if !ok {
		fmt.Fprintf(stderr, "eventbus: unknown command %q\n\n%s", args[0], usage)
		return errUsage
	}
	return cmd.run(ctx, env{getenv: getenv, stdout: stdout, stderr: stderr}, args[1:])
}

// flags returns a FlagSet for a command whose usage names its arguments.
func flags(e env, name, argsUsage, about string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(e.stderr)
	fs.Usage = func() {
		fmt.Fprintf(e.stderr, "Usage: eventbus %s [flags] %s\n\n%s\n\nFlags:\n", name, argsUsage, about)
		fs.PrintDefaults()
	}
	return fs
}

// parse parses flags wherever they stand among the arguments, so that
// "eventbus tail order:* -n 5" works as well as "eventbus tail -n 5 order:*",
// and returns the positional arguments.
func parse(fs *flag.FlagSet, args []string) ([]string, error) {
	var positional []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, err
			}
			return nil, errUsage
		}
		args = fs.Args()
		if len(args) == 0 {
			return positional, nil
		}
		if args[0] == "--" {
			return append(positional, args[1:]...), nil
		}
		positional = append(positional, args[0])
		args = args[1:]
	}
}

// common are the flags shared by the commands that talk to services.
type common struct {
	api, logger, apiKey string
	connectTimeout      time.Duration
}

func (c *common) register(fs *flag.FlagSet, e env) {
	fs.StringVar(&c.api, "api", serviceURL(e.getenv, "EVENTBUS_API", "API_HTTP_ADDR", ":8080"),
		"API base URL (env EVENTBUS_API, else that of API_HTTP_ADDR)")
	fs.StringVar(&c.logger, "logger", serviceURL(e.getenv, "EVENTBUS_LOGGER", "LOGGER_HTTP_ADDR", ":8082"),
		"logger base URL (env EVENTBUS_LOGGER, else that of LOGGER_HTTP_ADDR)")
	fs.StringVar(&c.apiKey, "api-key", e.getenv("EVENTBUS_API_KEY"), "API key sent as a bearer token (env EVENTBUS_API_KEY)")
	registerConnectTimeout(fs, &c.connectTimeout)
}

// defaultConnectTimeout is how long a command waits for a service to
// connect and then to begin its reply, unless --connect-timeout says
// otherwise: a listener that never answers is an error in seconds, not
// after the whole request's timeout.
const defaultConnectTimeout = 5 * time.Second

func registerConnectTimeout(fs *flag.FlagSet, d *time.Duration) {
	fs.DurationVar(d, "connect-timeout", defaultConnectTimeout, "how long to wait for a service to connect and begin its reply")
}

// serviceURL returns the default base URL of a service: the variable
// urlVar (EVENTBUS_API) when set, else the URL of the address the service
// listens on as the service and make run read it from addrVar
// (API_HTTP_ADDR), else that of defAddr.
func serviceURL(getenv func(string) string, urlVar, addrVar, defAddr string) string {
	if u := strings.TrimSpace(getenv(urlVar)); u != "" {
		return u
	}
	return "http://" + dialAddr(or(getenv(addrVar), defAddr))
}

// serviceAddr is serviceURL for a host:port (a gRPC address).
func serviceAddr(getenv func(string) string, addrEnv, listenVar, defAddr string) string {
	if a := strings.TrimSpace(getenv(addrEnv)); a != "" {
		return a
	}
	return dialAddr(or(getenv(listenVar), defAddr))
}

// dialAddr turns a listen address into one to dial: no host (":8080"),
// 0.0.0.0 or :: (every interface) become localhost.
func dialAddr(listen string) string {
	listen = strings.TrimSpace(listen)
	host, port, err := net.SplitHostPort(listen)
	if err != nil {
		return listen // not host:port: leave it for the request to report
	}
	switch host {
	case "", "0.0.0.0", "::":
		host = "localhost"
	}
	return net.JoinHostPort(host, port)
}

func or(v, def string) string {
	if strings.TrimSpace(v) == "" {
		return def
	}
	return v
}
