package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"sync"
	"sync/atomic"
	"time"

	"github.com/coder/websocket"
	pahopackets "github.com/eclipse/paho.golang/packets"
	"github.com/eclipse/paho.golang/paho"
	paho3 "github.com/eclipse/paho.mqtt.golang"
)

// mqttPublishTimeout bounds the wait for a publication's outcome (its
// PUBACK at QoS 1): past it, the publication counts as failed.
const mqttPublishTimeout = 10 * time.Second

var errPublishTimeout = fmt.Errorf("no PUBACK within %v", mqttPublishTimeout)

// lostConn remembers the error a connection ended with, unless the
// benchmark closed it itself.
type lostConn struct {
	closing atomic.Bool
	mu      sync.Mutex
	err     error
}

func (l *lostConn) setLost(err error) {
	if l.closing.Load() {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.err == nil {
		l.err = err
	}
}

func (l *lostConn) lost() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.err
}

// dialConn opens the connection an MQTT client runs over: a TCP socket,
// or a WebSocket (coder/websocket, "mqtt" subprotocol) whose binary
// messages carry the packets. Reads go through a buffer: both paho clients
// read a packet a few bytes at a time (its type, each byte of its length,
// then the rest), a read(2) each on a bare socket, which doubled what a
// delivery cost the load generator.
func dialConn(ctx context.Context, u *url.URL) (net.Conn, error) {
	var nc net.Conn
	switch u.Scheme {
	case "ws", "wss":
		conn, _, err := websocket.Dial(ctx, u.String(), &websocket.DialOptions{Subprotocols: []string{"mqtt"}})
		if err != nil {
			return nil, fmt.Errorf("dial %s: %w", u.Redacted(), err)
		}
		conn.SetReadLimit(16 << 20)
		nc = websocket.NetConn(context.Background(), conn, websocket.MessageBinary)
	default:
		var err error
		if nc, err = (&net.Dialer{}).DialContext(ctx, "tcp", u.Host); err != nil {
			return nil, fmt.Errorf("dial %s: %w", u.Redacted(), err)
		}
	}
	return &bufferedConn{Conn: nc, r: bufio.NewReader(nc)}, nil
}

// bufferedConn is a net.Conn read through a buffer.
type bufferedConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *bufferedConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// paho3Client is an MQTT 3.1.1 connection made by paho.mqtt.golang over
// dialConn's connection. paho writes each packet in one Write, as a
// WebSocket message must hold whole packets.
type paho3Client struct {
	lostConn
	c paho3.Client
}

func dialPaho3(ctx context.Context, u *url.URL, clientID, username, password string, connectTimeout time.Duration) (mqttClient, error) {
	c := &paho3Client{}
	opts := paho3.NewClientOptions().AddBroker(u.String()).SetClientID(clientID).SetProtocolVersion(4).
		SetCleanSession(true).SetAutoReconnect(false).SetConnectRetry(false).
		SetConnectTimeout(connectTimeout).SetKeepAlive(30 * time.Second).
		SetConnectionLostHandler(func(_ paho3.Client, err error) { c.setLost(err) }).
		SetCustomOpenConnectionFn(func(*url.URL, paho3.ClientOptions) (net.Conn, error) { return dialConn(ctx, u) })
	if username != "" {
		opts.SetUsername(username)
	}
	if password != "" {
		opts.SetPassword(password)
	}
	c.c = paho3.NewClient(opts)
	if err := wait3(ctx, c.c.Connect()); err != nil {
		return nil, fmt.Errorf("connect to %s: %w", u.Redacted(), err)
	}
	return c, nil
}

// wait3 waits for a paho.mqtt.golang token, or for ctx.
func wait3(ctx context.Context, t paho3.Token) error {
	select {
	case <-t.Done():
		return t.Error()
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (c *paho3Client) subscribe(ctx context.Context, topic string, qos byte, onMessage func([]byte)) error {
	t := c.c.Subscribe(topic, qos, func(_ paho3.Client, m paho3.Message) { onMessage(m.Payload()) })
	if err := wait3(ctx, t); err != nil {
		return fmt.Errorf("subscribe to %s: %w", topic, err)
	}
	if code := t.(*paho3.SubscribeToken).Result()[topic]; code >= 0x80 {
		return fmt.Errorf("subscribe to %s: SUBACK refused it (0x%02x)", topic, code)
	}
	return nil
}

func (c *paho3Client) publish(_ context.Context, topic string, qos byte, payload []byte, done func(error)) {
	t := c.c.Publish(topic, qos, false, payload)
	go func() {
		if !t.WaitTimeout(mqttPublishTimeout) {
			done(errPublishTimeout)
			return
		}
		done(t.Error())
	}()
}

func (c *paho3Client) close() {
	c.closing.Store(true)
	c.c.Disconnect(50)
}

// paho5Client is an MQTT 5.0 connection made by paho.golang over
// dialConn's connection.
type paho5Client struct {
	lostConn
	c         *paho.Client
	nc        net.Conn
	onMessage atomic.Pointer[func([]byte)]
}

func dialPaho5(ctx context.Context, u *url.URL, clientID, username, password string) (mqttClient, error) {
	nc, err := dialConn(ctx, u)
	if err != nil {
		return nil, err
	}
	c := &paho5Client{nc: nc}
	// paho writes a packet in several Writes, and from several goroutines
	// (its pinger, the publishers): over WebSocket each Write is a message,
	// so packets must not interleave. paho holds the lock of a conn that is
	// a sync.Locker around each packet.
	c.c = paho.NewClient(paho.ClientConfig{
		ClientID: clientID,
		Conn:     pahopackets.NewThreadSafeConn(nc),
		OnPublishReceived: []func(paho.PublishReceived) (bool, error){func(pr paho.PublishReceived) (bool, error) {
			if f := c.onMessage.Load(); f != nil {
				(*f)(pr.Packet.Payload)
			}
			return true, nil
		}},
		OnClientError: c.setLost,
		OnServerDisconnect: func(d *paho.Disconnect) {
			c.setLost(fmt.Errorf("DISCONNECT from the broker, reason 0x%02x", d.ReasonCode))
		},
	})
	cp := &paho.Connect{ClientID: clientID, KeepAlive: 30, CleanStart: true,
		Username: username, UsernameFlag: username != "", Password: []byte(password), PasswordFlag: password != ""}
	ack, err := c.c.Connect(ctx, cp)
	switch {
	case err != nil:
		nc.Close()
		return nil, fmt.Errorf("connect to %s: %w", u.Redacted(), err)
	case ack.ReasonCode != 0:
		nc.Close()
		return nil, fmt.Errorf("connect to %s: CONNACK reason 0x%02x %s", u.Redacted(), ack.ReasonCode, reasonString(ack.Properties))
	}
	return c, nil
}

func reasonString(p *paho.ConnackProperties) string {
	if p == nil {
		return ""
	}
	return p.ReasonString
}

func (c *paho5Client) subscribe(ctx context.Context, topic string, qos byte, onMessage func([]byte)) error {
	c.onMessage.Store(&onMessage)
	ack, err := c.c.Subscribe(ctx, &paho.Subscribe{Subscriptions: []paho.SubscribeOptions{{Topic: topic, QoS: qos}}})
	switch {
	case err != nil:
		return fmt.Errorf("subscribe to %s: %w", topic, err)
	case len(ack.Reasons) != 1 || ack.Reasons[0] >= 0x80:
		return fmt.Errorf("subscribe to %s: SUBACK refused it (%v)", topic, ack.Reasons)
	}
	return nil
}

func (c *paho5Client) publish(ctx context.Context, topic string, qos byte, payload []byte, done func(error)) {
	pub := &paho.Publish{Topic: topic, QoS: qos, Payload: payload}
	if qos == 0 {
		// Written before Publish returns: the publisher's pace is the
		// socket's.
		_, err := c.c.Publish(ctx, pub)
		done(err)
		return
	}
	go func() {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), mqttPublishTimeout)
		defer cancel()
		_, err := c.c.Publish(ctx, pub)
		if errors.Is(err, context.DeadlineExceeded) {
			err = errPublishTimeout
		}
		done(err)
	}()
}

func (c *paho5Client) close() {
	c.closing.Store(true)
	_ = c.c.Disconnect(&paho.Disconnect{})
	c.nc.Close()
}
