// Package control carries out, on this edge's connections, the commands
// the API publishes for every edge (package revocation): revoked tokens
// close their connections with 4003, a forced disconnect closes a user's
// with 4004, a forced unsubscribe drops a user's subscriptions with a
// notice.
package control

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/eventbus-suite/eventbus/pkg/bus"
	"github.com/eventbus-suite/eventbus/pkg/revocation"
	"github.com/eventbus-suite/eventbus/services/edge/internal/hub"
	"github.com/eventbus-suite/eventbus/services/edge/internal/protocol"
)

// Sessions are the connections a command names by client id rather than
// by token: MQTT's (package mqttapi).
type Sessions interface {
	// TakenOver closes the connections c.Action mqtt_takeover names.
	TakenOver(c revocation.Command) int
}

// Run carries out the commands sub delivers until ctx ends.
func Run(ctx context.Context, sub bus.Subscription, h *hub.Hub, s Sessions, log *slog.Logger, reg prometheus.Registerer) error {
	applied := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "eventbus_edge_control_commands_total", Help: "Commands of the control channel carried out, by action."}, []string{"action"})
	reg.MustRegister(applied)
	for {
		select {
		case m, ok := <-sub.Messages():
			if !ok {
				return errors.New("control subscription closed")
			}
			if m.Gap {
				// A revocation published meanwhile is in Redis, where
				// every new token is checked; a connection already open
				// is not cut until the next command names it.
				log.Warn("control channel had a gap: commands published meanwhile were missed by open connections")
				continue
			}
			c, err := revocation.Parse(m.Payload)
			if err != nil {
				log.Warn("not a command; ignored", "channel", m.Channel, "error", err)
				continue
			}
			n := Apply(h, s, c)
			applied.WithLabelValues(c.Action).Inc()
			log.Info("control command carried out", "action", c.Action, "sub", c.Sub, "jti", c.JTI, "pattern", c.Pattern, "client_id", c.ClientID, "connections", n)
		case <-ctx.Done():
			return nil
		}
	}
}

// Apply carries out c on h's connections and s's, and returns how many it
// touched.
func Apply(h *hub.Hub, s Sessions, c revocation.Command) int {
	switch c.Action {
	case revocation.ActionTakeover:
		return s.TakenOver(c)
	case revocation.ActionRevoke:
		if c.JTI != "" {
			return h.KickMatching(func(t hub.Token) bool { return t.ID == c.JTI }, hub.DisconnectRevoked)
		}
		return h.KickMatching(func(t hub.Token) bool { return t.Sub == c.Sub && t.IssuedAt.Before(c.IssuedBefore) }, hub.DisconnectRevoked)
	case revocation.ActionDisconnect:
		return h.KickMatching(func(t hub.Token) bool { return t.Sub == c.Sub }, hub.DisconnectDisconnected)
	case revocation.ActionUnsubscribe:
		return h.DropCovered(c.Sub, c.Pattern, func(p string) []byte { return protocol.Unsubscribed(p, "removed") })
	}
	return 0
}

// Live publishes commands to every edge's control subscription as plain
// pub/sub messages, without the record the bus keeps of what it
// publishes: for commands that matter only to connections open now, such
// as an MQTT takeover, which would otherwise cost every CONNECT an event
// in the eventbus stream that the logger logs and resuming clients read.
// An edge whose control subscription is away when one is sent misses it,
// as it misses a recorded one (Run ignores gaps): the takeover it stood
// for is then left to the session store, which a newer connection's saves
// always win.
type Live struct {
	// Bus publishes live only (redisbus.Bus.PublishLive), as the control
	// subscription hears it on a single Redis or a cluster.
	Bus interface {
		PublishLive(ctx context.Context, ch string, payload []byte) (int64, error)
	}
	// Source names the sender in the command's envelope.
	Source string
}

// Announce sends c.
func (l Live) Announce(ctx context.Context, c revocation.Command) error {
	payload, err := c.Payload(l.Source, time.Now())
	if err != nil {
		return err
	}
	if _, err := l.Bus.PublishLive(ctx, revocation.ControlChannel, payload); err != nil {
		return fmt.Errorf("publish %s on the control channel: %w", c.Action, err)
	}
	return nil
}
