package main

import (
	"bufio"
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	paho3 "github.com/eclipse/paho.mqtt.golang"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/eventbus-suite/eventbus/pkg/redistest"
	"github.com/eventbus-suite/eventbus/pkg/servicetest"
)

// tlsFiles writes a self-signed certificate for 127.0.0.1 and localhost,
// and its key, as PEM files in a temporary directory; the certificate is
// its own CA.
func tlsFiles(t *testing.T) (cert, key string, pool *x509.CertPool) {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "edge test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage:    x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IsCA:        true, BasicConstraintsValid: true,
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, DNSNames: []string{"localhost"},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	cert, key = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(cert, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(key, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool = x509.NewCertPool()
	pool.AddCert(c)
	return cert, key, pool
}

// tlsEdge is an edge with MQTT over TCP and over TLS, with the CA its
// clients trust.
type tlsEdge struct {
	*edge
	mqtts  string // host:port of MQTT over TLS
	caFile string
	pool   *x509.CertPool
}

func startTLSEdge(t *testing.T, env map[string]string) *tlsEdge {
	t.Helper()
	cert, key, pool := tlsFiles(t)
	vars := map[string]string{"EDGE_MQTTS_ADDR": "127.0.0.1:0", "EDGE_TLS_CERT": cert, "EDGE_TLS_KEY": key}
	for k, v := range env {
		vars[k] = v
	}
	e := startEdge(t, redistest.Shared(t), vars)
	return &tlsEdge{edge: e, mqtts: e.svc.Addrs["mqtts_addr"], caFile: cert, pool: pool}
}

// dialTCP opens a bare MQTT connection to addr, over TLS when cfg is not
// nil.
func dialTCP(t *testing.T, addr string, cfg *tls.Config, version byte) *mqttConn {
	t.Helper()
	var nc net.Conn
	var err error
	if cfg != nil {
		nc, err = tls.DialWithDialer(&net.Dialer{Timeout: 10 * time.Second}, "tcp", addr, cfg)
	} else {
		nc, err = net.DialTimeout("tcp", addr, 10*time.Second)
	}
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	t.Cleanup(func() { nc.Close() })
	return &mqttConn{t: t, nc: nc, br: bufio.NewReader(nc), version: version}
}

// closedByEdge reads nc until the edge closes it, failing the test if
// that takes 10 s or the edge sends anything.
func closedByEdge(t *testing.T, nc net.Conn) {
	t.Helper()
	_ = nc.SetReadDeadline(time.Now().Add(10 * time.Second))
	n, err := nc.Read(make([]byte, 64))
	var ne net.Error
	switch {
	case errors.As(err, &ne) && ne.Timeout():
		t.Fatalf("socket still open after 10 s, want it closed by the edge")
	case err == nil:
		t.Fatalf("read %d bytes, want the socket closed", n)
	}
}

func needMosquitto(t *testing.T) {
	t.Helper()
	for _, p := range []string{"mosquitto_sub", "mosquitto_pub", "stdbuf"} {
		if _, err := exec.LookPath(p); err != nil {
			servicetest.Needs(t, "EVENTBUS_REQUIRE_MOSQUITTO", fmt.Sprintf("no %s on PATH (apt-get install mosquitto-clients)", p))
		}
	}
}

// mosquittoSub runs mosquitto_sub with args, taking one message, and
// returns once the edge has acknowledged its subscription; the returned
// function waits for the message and returns mosquitto_sub's line of it,
// "topic payload".
func mosquittoSub(t *testing.T, args ...string) func() string {
	t.Helper()
	// Line-buffered, so that its debug lines say when it has subscribed.
	cmd := exec.CommandContext(t.Context(), "stdbuf", append([]string{"-oL", "mosquitto_sub", "-d", "-C", "1", "-W", "20", "-F", "%t %p"}, args...)...)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	lines := make(chan string)
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer close(lines)
		sc := bufio.NewScanner(out)
		for sc.Scan() {
			select {
			case lines <- sc.Text():
			case <-stop: // the test stopped reading
			}
		}
	}()
	var seen []string
	next := func(what string, ok func(string) bool) string {
		t.Helper()
		for l := range lines {
			seen = append(seen, l)
			if ok(l) {
				return l
			}
		}
		_ = cmd.Wait()
		t.Fatalf("mosquitto_sub %v ended before %s: %s\n%s", args, what, stderr.String(), strings.Join(seen, "\n"))
		return ""
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		close(stop)
		<-done
		_ = cmd.Wait()
	})
	next("its SUBACK", func(l string) bool { return strings.HasPrefix(l, "Subscribed ") })
	return func() string {
		t.Helper()
		return next("a message", func(l string) bool { return !strings.HasPrefix(l, "Client ") && !strings.HasPrefix(l, "Subscribed ") })
	}
}

// An event published on the bus reaches MQTT subscribers over TCP and over
// TLS, paho's and mosquitto_sub alike, as it reaches those of /mqtt.
func TestMQTTOverTCPAndTLSDelivers(t *testing.T) {
	t.Parallel()
	needMosquitto(t)
	e := startTLSEdge(t, nil)
	tok := mint(t, "42", "order:*")
	host, port, _ := net.SplitHostPort(e.mqtt)
	shost, sport, _ := net.SplitHostPort(e.mqtts)

	got := map[string]func() string{
		"mosquitto_sub over TCP, 3.1.1": mosquittoSub(t, "-h", host, "-p", port, "-u", "device", "-P", tok, "-t", "order/+"),
		"mosquitto_sub over TLS, 5.0": mosquittoSub(t, "-h", shost, "-p", sport, "--cafile", e.caFile, "-V", "mqttv5",
			"-u", "device", "-P", tok, "-t", "order/+"),
	}
	pahoGot := map[string]chan paho3.Message{}
	for name, url := range map[string]string{"paho over TCP": "tcp://" + e.mqtt, "paho over TLS": "ssl://" + e.mqtts} {
		msgs := make(chan paho3.Message, 1)
		opts := paho3.NewClientOptions().AddBroker(url).SetClientID(strings.ReplaceAll(name, " ", "-")).
			SetUsername("device").SetPassword(tok).SetTLSConfig(&tls.Config{RootCAs: e.pool}).SetAutoReconnect(false)
		c := paho3.NewClient(opts)
		if tk := c.Connect(); !tk.WaitTimeout(10*time.Second) || tk.Error() != nil {
			t.Fatalf("%s: connect: %v", name, tk.Error())
		}
		t.Cleanup(func() { c.Disconnect(0) })
		tk := c.Subscribe("order/+", 1, func(_ paho3.Client, m paho3.Message) { msgs <- m })
		if !tk.WaitTimeout(10*time.Second) || tk.Error() != nil {
			t.Fatalf("%s: subscribe: %v", name, tk.Error())
		}
		pahoGot[name] = msgs
	}

	e.publish(t, "order:placed", "o-1", -1)
	for name, next := range got {
		topic, payload, _ := strings.Cut(next(), " ")
		if topic != "order/placed" || subjectOf(t, []byte(payload)) != "o-1" {
			t.Errorf("%s got %s %s, want the event on order/placed", name, topic, payload)
		}
	}
	for name, msgs := range pahoGot {
		select {
		case m := <-msgs:
			if m.Topic() != "order/placed" || m.Qos() != 1 || subjectOf(t, m.Payload()) != "o-1" {
				t.Errorf("%s got %s at QoS %d: %s, want the event on order/placed at QoS 1", name, m.Topic(), m.Qos(), m.Payload())
			}
		case <-time.After(10 * time.Second):
			t.Errorf("%s got nothing in 10 s", name)
		}
	}
}

// A device publishing with mosquitto_pub over TCP reaches an MQTT client
// of /mqtt over WebSocket, and one publishing over TLS as well.
func TestMQTTDeviceOverTCPReachesWebSocket(t *testing.T) {
	t.Parallel()
	needMosquitto(t)
	e := startTLSEdge(t, nil)
	browser := e.dialMQTT(t, "/mqtt", 5)
	browser.connect("browser", mint(t, "1", "sensor:*"), 30)
	if codes := browser.subscribe(1, map[string]byte{"sensor/+": 0}, "sensor/+"); codes[0] != 0 {
		t.Fatalf("SUBACK %v, want QoS 0 granted", codes)
	}
	tok := mintMQTT(t, "dev-7", nil, []string{"sensor:*"})
	host, port, _ := net.SplitHostPort(e.mqtt)
	shost, sport, _ := net.SplitHostPort(e.mqtts)
	for _, tt := range []struct {
		name  string
		topic string
		args  []string
	}{
		{"TCP, 3.1.1", "sensor/temp", []string{"-h", host, "-p", port, "-i", "thermo-1"}},
		{"TLS, 5.0", "sensor/hum", []string{"-h", shost, "-p", sport, "--cafile", e.caFile, "-V", "mqttv5", "-i", "hygro-1"}},
	} {
		cmd := exec.CommandContext(t.Context(), "mosquitto_pub", append(tt.args, "-u", "device", "-P", tok, "-q", "1",
			"-t", tt.topic, "-m", `{"celsius":21.5}`)...)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("%s: mosquitto_pub: %v\n%s", tt.name, err, out)
		}
		// What a device publishes reaches MQTT subscribers as it sent it.
		pk := browser.expect(packets.Publish)
		if pk.TopicName != tt.topic || string(pk.Payload) != `{"celsius":21.5}` {
			t.Errorf("%s: /mqtt got %s %s, want the device's reading on %s, byte for byte", tt.name, pk.TopicName, pk.Payload, tt.topic)
		}
	}
}

// CONNECT with a bad token over TCP and TLS is answered as over /mqtt:
// CONNACK 5 (3.1.1) or 0x87 (5.0), then the socket closes; mosquitto_sub
// says so and exits.
func TestMQTTOverTCPRefusesABadToken(t *testing.T) {
	t.Parallel()
	e := startTLSEdge(t, nil)
	for _, v := range []byte{4, 5} {
		want := map[byte]byte{4: 5, 5: 0x87}[v]
		for name, cfg := range map[string]*tls.Config{"TCP": nil, "TLS": {RootCAs: e.pool}} {
			addr := map[string]string{"TCP": e.mqtt, "TLS": e.mqtts}[name]
			m := dialTCP(t, addr, cfg, v)
			if ack := m.connect("c", "not-a-token", 30); ack.ReasonCode != want {
				t.Errorf("v%d over %s: CONNACK %#x, want %#x", v, name, ack.ReasonCode, want)
			}
			closedByEdge(t, m.nc)
		}
	}
	needMosquitto(t)
	host, port, _ := net.SplitHostPort(e.mqtt)
	out, err := exec.CommandContext(t.Context(), "mosquitto_sub", "-h", host, "-p", port, "-V", "mqttv5",
		"-u", "device", "-P", "not-a-token", "-t", "order/+", "-C", "1", "-W", "10").CombinedOutput()
	if err == nil || !strings.Contains(string(out), "Not authorized") {
		t.Errorf("mosquitto_sub with a bad token: %v, %q; want it refused as not authorized", err, out)
	}
}

// Sockets on the TCP listener count against their address before CONNECT
// as /mqtt's do: past EDGE_MAX_USER_CONNECTIONS from one address the next
// is closed at once, and one that never sends CONNECT (or never finishes
// its TLS handshake) is closed after EDGE_AUTH_TIMEOUT.
func TestMQTTOverTCPPreConnectBounds(t *testing.T) {
	t.Parallel()
	t.Run("per address", func(t *testing.T) {
		t.Parallel()
		const perAddr = 3
		e := startTLSEdge(t, map[string]string{"EDGE_AUTH_TIMEOUT": "10m", "EDGE_MAX_USER_CONNECTIONS": fmt.Sprint(perAddr)})
		var held []net.Conn
		for i := range perAddr {
			addr := e.mqtt
			if i == 0 {
				addr = e.mqtts // a TLS socket is counted alike
			}
			held = append(held, dialTCP(t, addr, nil, 4).nc)
		}
		servicetest.WaitFor(t, fmt.Sprintf("%d connections in the hub", perAddr), func() bool {
			return e.metric(t, "eventbus_edge_connections") == perAddr
		})
		for _, addr := range []string{e.mqtt, e.mqtts} {
			closedByEdge(t, dialTCP(t, addr, nil, 4).nc)
		}
		// The held sockets are still served: one sends CONNECT and is
		// answered.
		m := &mqttConn{t: t, nc: held[1], br: bufio.NewReader(held[1]), version: 4}
		if ack := m.connect("held", mint(t, "1"), 30); ack.ReasonCode != 0 {
			t.Errorf("CONNACK %#x on a held socket, want success", ack.ReasonCode)
		}
		if got := e.metric(t, "eventbus_edge_connections"); got != perAddr {
			t.Errorf("eventbus_edge_connections = %v, want %d", got, perAddr)
		}
	})
	t.Run("connect timeout", func(t *testing.T) {
		t.Parallel()
		e := startTLSEdge(t, map[string]string{"EDGE_AUTH_TIMEOUT": "200ms"})
		closedByEdge(t, dialTCP(t, e.mqtt, nil, 4).nc)
		closedByEdge(t, dialTCP(t, e.mqtts, nil, 4).nc) // no handshake
		closedByEdge(t, dialTCP(t, e.mqtts, &tls.Config{RootCAs: e.pool}, 4).nc)
		servicetest.WaitFor(t, "no connection in the hub", func() bool {
			return e.metric(t, "eventbus_edge_connections") == 0
		})
	})
}

// A packet larger than EDGE_MAX_MESSAGE_BYTES and a flood of packets close
// a TCP connection with the reason /mqtt gives.
func TestMQTTOverTCPLimits(t *testing.T) {
	t.Parallel()
	e := startTLSEdge(t, map[string]string{"EDGE_MAX_MESSAGE_BYTES": "1024", "EDGE_RATE_LIMIT": "1", "EDGE_RATE_BURST": "5"})
	big := dialTCP(t, e.mqtt, nil, 5)
	big.connect("big", mintMQTT(t, "7", nil, []string{"sensor:*"}), 30)
	big.send(publishPacket("sensor/temp", 0, 0, `"`+strings.Repeat("x", 2000)+`"`))
	if d := big.closed(); d.ReasonCode != 0x95 {
		t.Errorf("oversize PUBLISH: DISCONNECT %#x, want 0x95 packet too large", d.ReasonCode)
	}
	flood := dialTCP(t, e.mqtts, &tls.Config{RootCAs: e.pool}, 5)
	flood.connect("flood", mint(t, "7"), 30)
	flood.flood(10)
	if d := flood.closed(packets.Pingresp); d.ReasonCode != 0x96 {
		t.Errorf("10 packets at once past a burst of 5: DISCONNECT %#x, want 0x96 message rate too high", d.ReasonCode)
	}
}

// On shutdown a 5.0 client over TCP is told the server is shutting down
// and its socket closed, and the edge stops.
func TestMQTTOverTCPShutdown(t *testing.T) {
	t.Parallel()
	e := startTLSEdge(t, nil)
	tcp := dialTCP(t, e.mqtt, nil, 5)
	tcp.connect("tcp", mint(t, "1"), 30)
	tls5 := dialTCP(t, e.mqtts, &tls.Config{RootCAs: e.pool}, 5)
	tls5.connect("tls", mint(t, "1"), 30)
	preConnect := dialTCP(t, e.mqtt, nil, 5)
	stopped := make(chan error, 1)
	go func() { stopped <- e.svc.Stop() }()
	for name, m := range map[string]*mqttConn{"TCP": tcp, "TLS": tls5} {
		if d := m.closed(); d.ReasonCode != 0x8B {
			t.Errorf("%s: DISCONNECT %#x on shutdown, want 0x8B server shutting down", name, d.ReasonCode)
		}
	}
	closedByEdge(t, preConnect.nc)
	if err := <-stopped; err != nil {
		t.Errorf("run returned %v after shutdown, want nil", err)
	}
	if stillAccepts(e.mqtt) {
		t.Errorf("the TCP listener still accepts after shutdown")
	}
}

// stillAccepts reports whether something listens on addr. A dial from an
// ephemeral port that happens to be addr's own connects to itself (TCP's
// simultaneous open), with no listener: that one is dialled again.
func stillAccepts(addr string) bool {
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			return false
		}
		self := c.LocalAddr().String() == c.RemoteAddr().String()
		c.Close()
		if !self {
			return true
		}
	}
}

// EDGE_MQTTS_ADDR without a usable key pair stops the edge at start,
// naming the variables.
func TestMQTTTLSConfigRefused(t *testing.T) {
	t.Parallel()
	cert, _, _ := tlsFiles(t)
	_, otherKey, _ := tlsFiles(t)
	for _, tt := range []struct {
		name string
		env  map[string]string
		want []string
	}{
		{"no cert or key", map[string]string{"EDGE_MQTTS_ADDR": "127.0.0.1:0"}, []string{"EDGE_TLS_CERT", "EDGE_TLS_KEY", "EDGE_MQTTS_ADDR"}},
		{"unreadable key", map[string]string{"EDGE_MQTTS_ADDR": "127.0.0.1:0", "EDGE_TLS_CERT": cert, "EDGE_TLS_KEY": cert + ".missing"}, []string{"EDGE_TLS_KEY"}},
		{"mismatched", map[string]string{"EDGE_MQTTS_ADDR": "127.0.0.1:0", "EDGE_TLS_CERT": cert, "EDGE_TLS_KEY": otherKey}, []string{"EDGE_TLS_KEY", "EDGE_TLS_CERT", "does not match"}},
		{"cert without the listener", map[string]string{"EDGE_TLS_CERT": cert}, []string{"EDGE_TLS_CERT", "EDGE_MQTTS_ADDR"}},
		{"bad TCP address", map[string]string{"EDGE_MQTT_ADDR": "1883"}, []string{"EDGE_MQTT_ADDR"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			env := map[string]string{"EDGE_HTTP_ADDR": "127.0.0.1:0", "EDGE_MQTT_ADDR": "off", "EDGE_JWT_SECRET": secret}
			for k, v := range tt.env {
				env[k] = v
			}
			err := run(t.Context(), func(k string) string { return env[k] }, io.Discard)
			if err == nil {
				t.Fatal("run = nil, want a configuration error")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("run = %v, want it to say %s", err, w)
				}
			}
		})
	}
}

// Behind a proxy that speaks the PROXY protocol (nginx's stream
// proxy_protocol, as the compose file runs it), a TCP connection counts
// against the client's address the header names, not the proxy's; a
// trusted proxy's connection without one, against the proxy's. From
// anyone not trusted a header is no MQTT: the socket is closed unanswered,
// also from a proxy trusted over HTTP only.
func TestMQTTOverTCPBehindAProxy(t *testing.T) {
	t.Parallel()
	e := startEdge(t, redistest.Shared(t), map[string]string{
		"EDGE_TRUSTED_PROXIES": "127.0.0.1", "EDGE_AUTH_TIMEOUT": "10m", "EDGE_MAX_USER_CONNECTIONS": "1"})
	via := func(client string) *mqttConn {
		t.Helper()
		m := dialTCP(t, e.mqtt, nil, 5)
		header := fmt.Sprintf("PROXY TCP4 %s 127.0.0.1 40000 1883\r\n", client)
		if client == "" {
			// None: the edge waits for a trusted proxy's first bytes to
			// tell; these are CONNECT's first.
			header = "\x10"
		}
		if _, err := fmt.Fprint(m.nc, header); err != nil {
			t.Fatal(err)
		}
		return m
	}
	held := func(n float64) {
		t.Helper()
		servicetest.WaitFor(t, fmt.Sprintf("%v sockets held before CONNECT", n), func() bool { return e.metric(t, "eventbus_edge_connections") == n })
	}
	first := via("192.0.2.1") // 192.0.2.1's one place before CONNECT
	held(1)
	closedByEdge(t, via("192.0.2.1").nc)
	other := via("192.0.2.2")
	held(2)
	via("") // the proxy's own address
	held(3)
	closedByEdge(t, via("").nc)
	for i, m := range []*mqttConn{first, other} {
		if ack := m.connect(fmt.Sprint("c", i), mint(t, fmt.Sprint(i)), 30); ack.ReasonCode != 0 {
			t.Fatalf("connection %d: CONNACK %#x", i, ack.ReasonCode)
		}
	}

	// An edge that trusts no one, and one that trusts the proxy over HTTP
	// only (EDGE_MQTT_TRUSTED_PROXIES=none: devices reach MQTT directly).
	for _, env := range []map[string]string{nil, {"EDGE_TRUSTED_PROXIES": "127.0.0.1", "EDGE_MQTT_TRUSTED_PROXIES": "none"}} {
		untrusting := startEdge(t, redistest.Shared(t), env)
		m := dialTCP(t, untrusting.mqtt, nil, 5)
		if _, err := fmt.Fprint(m.nc, "PROXY TCP4 192.0.2.9 127.0.0.1 40000 1883\r\n"); err != nil {
			t.Fatal(err)
		}
		m.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connect}, Connect: packets.ConnectParams{
			ProtocolName: []byte("MQTT"), ClientIdentifier: "spoof", Clean: true, Keepalive: 30}})
		closedByEdge(t, m.nc)
	}
}

// A connection over TCP idle for EDGE_MQTT_IDLE_AFTER moves its reader to
// a fresh goroutine; at 1 ms nearly every wait moves, and the session
// does all it did: SUBSCRIBE, deliveries and their PUBACKs, PINGREQ, the
// keep-alive's close, the edge's shutdown. Each step starts with the
// reader moved: eventbus_edge_mqtt_idle_readers counts it.
func TestMQTTOverTCPIdleReaderMoves(t *testing.T) {
	t.Parallel()
	e := startTLSEdge(t, map[string]string{"EDGE_MQTT_IDLE_AFTER": "1ms"})
	idle := func(want float64) {
		t.Helper()
		servicetest.WaitFor(t, fmt.Sprintf("%v idle readers", want), func() bool {
			return servicetest.Metric(t, e.base, "eventbus_edge_mqtt_idle_readers") == want
		})
	}
	silent := dialTCP(t, e.mqtt, nil, 5)
	silent.connect("silent", mint(t, "7"), 1)
	idle(1)
	if d := silent.closed(); d.ReasonCode != 0x8D {
		t.Errorf("silent past its keep-alive, its reader moved: DISCONNECT %#x, want 0x8D keep alive timeout", d.ReasonCode)
	}
	idle(0)

	m := dialTCP(t, e.mqtt, nil, 5)
	m.connect("mover", mint(t, "42", "order:*"), 30)
	idle(1)
	if got := m.subscribe(1, map[string]byte{"order/+": 1}, "order/+"); !bytes.Equal(got, []byte{1}) {
		t.Fatalf("SUBACK %v after the reader moved, want [1]", got)
	}
	for i := range 3 {
		idle(1)
		subject := fmt.Sprintf("o-%d", i)
		e.publish(t, "order:placed", subject, 1)
		pk := m.expect(packets.Publish)
		if pk.TopicName != "order/placed" || subjectOf(t, pk.Payload) != subject {
			t.Fatalf("got %s %s, want %s on order/placed", pk.TopicName, pk.Payload, subject)
		}
		idle(1)
		m.send(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Puback}, PacketID: pk.PacketID})
		if got := m.untilPong(); len(got) != 0 {
			t.Fatalf("before PINGRESP: %d packets, want none", len(got))
		}
	}

	idle(1)
	stopped := make(chan error, 1)
	go func() { stopped <- e.svc.Stop() }()
	if d := m.closed(); d.ReasonCode != 0x8B {
		t.Errorf("a moved reader's session on shutdown: DISCONNECT %#x, want 0x8B server shutting down", d.ReasonCode)
	}
	if err := <-stopped; err != nil {
		t.Errorf("run returned %v after shutdown, want nil", err)
	}
}

// A packet under way when EDGE_MQTT_IDLE_AFTER passes is read whole: the
// reader's idle deadline never cuts it. A PINGREQ, then the first byte of
// another in the same write, its second byte after the deadline; the
// sleep shapes the input (a slow sender), it waits on nothing.
func TestMQTTOverTCPIdleDeadlineSparesAPacketUnderWay(t *testing.T) {
	t.Parallel()
	const idleAfter = 300 * time.Millisecond
	e := startTLSEdge(t, map[string]string{"EDGE_MQTT_IDLE_AFTER": idleAfter.String()})
	m := dialTCP(t, e.mqtt, nil, 5)
	m.connect("slow", mint(t, "42"), 30)
	if _, err := m.nc.Write([]byte{packets.Pingreq << 4, 0, packets.Pingreq << 4}); err != nil {
		t.Fatal(err)
	}
	m.expect(packets.Pingresp)
	time.Sleep(2 * idleAfter)
	if _, err := m.nc.Write([]byte{0}); err != nil {
		t.Fatal(err)
	}
	m.expect(packets.Pingresp)
}
