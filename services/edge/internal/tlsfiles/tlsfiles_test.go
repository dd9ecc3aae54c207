package tlsfiles_test

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"log/slog"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/eventbus-suite/eventbus/services/edge/internal/tlsfiles"
)

// pemPair makes a self-signed certificate for localhost with serial, and
// its key, in PEM.
func pemPair(t *testing.T, serial int64) (certPEM, keyPEM []byte, cert *x509.Certificate) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: "localhost"}, DNSNames: []string{"localhost"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err = x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), cert
}

// write puts data in file as a renewal would, its modification time
// moved on by step so that no file system's clock granularity hides it.
func write(t *testing.T, file string, data []byte, step int) {
	t.Helper()
	if err := os.WriteFile(file, data, 0o600); err != nil {
		t.Fatal(err)
	}
	at := time.Now().Add(time.Duration(step) * time.Hour)
	if err := os.Chtimes(file, at, at); err != nil {
		t.Fatal(err)
	}
}

// served is the serial of the certificate a TLS client is shown by a
// listener that takes its certificate from p.
func served(t *testing.T, p *tlsfiles.Pair, roots *x509.CertPool) int64 {
	t.Helper()
	l, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{GetCertificate: p.GetCertificate})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		_ = c.(*tls.Conn).Handshake()
	}()
	c, err := tls.Dial("tcp", l.Addr().String(), &tls.Config{ServerName: "localhost", RootCAs: roots})
	if err != nil {
		t.Fatalf("handshake: %v", err)
	}
	defer c.Close()
	return c.ConnectionState().PeerCertificates[0].SerialNumber.Int64()
}

// A renewal takes effect at the next handshake; one half written keeps
// the pair in use until the other half comes; a file gone keeps it too.
func TestPairFollowsItsFiles(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	certFile, keyFile := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	roots := x509.NewCertPool()
	c1, k1, x1 := pemPair(t, 1)
	c2, k2, x2 := pemPair(t, 2)
	c3, k3, x3 := pemPair(t, 3)
	for _, x := range []*x509.Certificate{x1, x2, x3} {
		roots.AddCert(x)
	}
	write(t, certFile, c1, 0)
	write(t, keyFile, k1, 0)
	var logged bytes.Buffer
	p, err := tlsfiles.Load(certFile, keyFile, slog.New(slog.NewTextHandler(&logged, nil)))
	if err != nil {
		t.Fatal(err)
	}
	if got := served(t, p, roots); got != 1 {
		t.Fatalf("served serial %d, want 1", got)
	}

	write(t, certFile, c2, 1)
	write(t, keyFile, k2, 1)
	if got := served(t, p, roots); got != 2 {
		t.Fatalf("after a renewal: served serial %d, want 2", got)
	}

	write(t, certFile, c3, 2) // the key is still the second's
	for range 2 {
		if got := served(t, p, roots); got != 2 {
			t.Fatalf("with the certificate renewed and not its key: served serial %d, want 2 still", got)
		}
	}
	write(t, keyFile, k3, 2)
	if got := served(t, p, roots); got != 3 {
		t.Fatalf("once the key came too: served serial %d, want 3", got)
	}

	if err := os.Remove(keyFile); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if got := served(t, p, roots); got != 3 {
			t.Fatalf("with the key file gone: served serial %d, want 3 still", got)
		}
	}
	// Each version is reported once, however many handshakes meet it.
	log := logged.String()
	for msg, want := range map[string]int{"read again": 2, "does not load": 1, "cannot be read": 1} {
		if n := strings.Count(log, msg); n != want {
			t.Errorf("the log says %q %d times, want %d:\n%s", msg, n, want, log)
		}
	}
}

// Load refuses files that are missing or do not make a pair.
func TestLoadRefusesWhatIsNoPair(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	c1, _, _ := pemPair(t, 1)
	_, k2, _ := pemPair(t, 2)
	certFile, keyFile := filepath.Join(dir, "tls.crt"), filepath.Join(dir, "tls.key")
	if _, err := tlsfiles.Load(certFile, keyFile, nil); err == nil {
		t.Error("Load of missing files succeeded")
	}
	write(t, certFile, c1, 0)
	write(t, keyFile, k2, 0)
	if _, err := tlsfiles.Load(certFile, keyFile, nil); err == nil {
		t.Error("Load of a certificate with another's key succeeded")
	}
	write(t, keyFile, []byte("not a key"), 0)
	if _, err := tlsfiles.Load(certFile, keyFile, nil); err == nil {
		t.Error("Load of a key that is no PEM succeeded")
	}
}
