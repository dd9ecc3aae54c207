// Package tlsfiles serves a TLS certificate from its PEM files and reads
// them again when they change, so that a renewed certificate (from
// cert-manager, certbot, or a Kubernetes Secret updated in place) takes
// effect at the next handshake, without a restart.
package tlsfiles

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"
)

// Pair is a certificate and its key, kept in two files.
type Pair struct {
	certFile, keyFile string
	log               *slog.Logger

	mu     sync.Mutex
	seen   [2]stamp         // the files as they were when last read
	cert   *tls.Certificate // the pair in use: the last that loaded
	failed string           // why the files could not be looked at, as last reported
}

// stamp tells a file's versions apart: a renewal writes a new file, or
// points a symlink (a Secret's volume) at one, with a new modification
// time or size.
type stamp struct {
	mod  time.Time
	size int64
}

// Load reads the pair of certFile and keyFile. The files are looked at
// again at every handshake; log, when not nil, says when they are read
// again and when what they hold could not be used.
func Load(certFile, keyFile string, log *slog.Logger) (*Pair, error) {
	p := &Pair{certFile: certFile, keyFile: keyFile, log: log}
	seen, err := p.stamps()
	if err != nil {
		return nil, err
	}
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("load TLS key pair %s, %s: %w", certFile, keyFile, err)
	}
	p.seen, p.cert = seen, &cert
	return p, nil
}

// stamps looks at both files, before they are read: a file that changes
// between the two is read again at the next handshake.
func (p *Pair) stamps() ([2]stamp, error) {
	var out [2]stamp
	for i, f := range []string{p.certFile, p.keyFile} {
		fi, err := os.Stat(f)
		if err != nil {
			return out, err
		}
		out[i] = stamp{fi.ModTime(), fi.Size()}
	}
	return out, nil
}

// GetCertificate is tls.Config's: the pair as the files hold it now, or
// the one in use when they cannot be read or do not make a pair (a
// renewal half written: the certificate new, the key not yet). Each such
// version is tried, and reported, once.
func (p *Pair) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	now, err := p.stamps()
	if err != nil {
		if err.Error() != p.failed {
			p.failed = err.Error()
			p.logf(slog.LevelWarn, "TLS key pair files cannot be read: the previous pair stays in use", "error", err)
		}
		return p.cert, nil
	}
	p.failed = ""
	if now == p.seen {
		return p.cert, nil
	}
	p.seen = now
	cert, err := tls.LoadX509KeyPair(p.certFile, p.keyFile)
	if err != nil {
		p.logf(slog.LevelWarn, "TLS key pair changed but does not load: the previous one stays in use", "error", err)
		return p.cert, nil
	}
	p.cert = &cert
	p.logf(slog.LevelInfo, "TLS key pair read again")
	return p.cert, nil
}

func (p *Pair) logf(level slog.Level, msg string, args ...any) {
	if p.log != nil {
		p.log.Log(context.Background(), level, msg, append([]any{"cert", p.certFile, "key", p.keyFile}, args...)...)
	}
}
