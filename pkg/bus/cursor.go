package bus

import (
	"cmp"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"

	"github.com/eventbus-suite/eventbus/pkg/channel"
)

// ErrBadCursor is wrapped by ParseCursor's errors.
var ErrBadCursor = errors.New("bad history cursor")

// offsetRE is a stream offset: "<ms>-<seq>".
var offsetRE = regexp.MustCompile(`^[0-9]{1,20}-[0-9]{1,20}$`)

// epochRE is an epoch: hex digits.
var epochRE = regexp.MustCompile(`^[0-9a-f]{1,64}$`)

// IsOffset reports whether s is a stream offset such as "1732290000000-0".
func IsOffset(s string) bool { return offsetRE.MatchString(s) }

// CompareOffsets orders two offsets of one namespace: -1 when a comes
// before b, 0 when equal, +1 after. "" comes first, as "0-0" does.
func CompareOffsets(a, b string) int {
	am, as := SplitOffset(a)
	bm, bs := SplitOffset(b)
	return cmp.Or(cmp.Compare(am, bm), cmp.Compare(as, bs))
}

// SplitOffset returns an offset's milliseconds and sequence number; zeros
// for what is not an offset.
func SplitOffset(o string) (ms, seq uint64) {
	m, s, _ := strings.Cut(o, "-")
	ms, _ = strconv.ParseUint(m, 10, 64)
	seq, _ = strconv.ParseUint(s, 10, 64)
	return ms, seq
}

// IsEpoch reports whether s is an epoch: hex digits.
func IsEpoch(s string) bool { return epochRE.MatchString(s) }

// IsStream reports whether s names a stream (History.StreamOf): a
// namespace, one token of the channel grammar, maybe followed by '.' and a
// partition number without leading zeros.
func IsStream(s string) bool {
	ns, part, partitioned := strings.Cut(s, ".")
	if channel.Validate(ns) != nil || strings.Contains(ns, ":") {
		return false
	}
	if !partitioned {
		return true
	}
	n, err := strconv.Atoi(part)
	return err == nil && n >= 0 && strconv.Itoa(n) == part
}

// String encodes c as an opaque token that is safe in a URL, for clients
// to hand back to ParseCursor.
func (c Cursor) String() string {
	m := make(map[string][2]string, len(c))
	for ns, p := range c {
		m[ns] = [2]string{p.Offset, p.Epoch}
	}
	b, _ := json.Marshal(m) // strings always marshal
	return base64.RawURLEncoding.EncodeToString(b)
}

// ParseCursor decodes what Cursor.String made. It checks every part, as the
// token comes from clients.
func ParseCursor(s string) (Cursor, error) {
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil {
		return nil, fmt.Errorf("%w: not base64url", ErrBadCursor)
	}
	var m map[string][2]string
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("%w: not a cursor", ErrBadCursor)
	}
	c := make(Cursor, len(m))
	for ns, p := range m {
		if !IsStream(ns) || !IsOffset(p[0]) || !epochRE.MatchString(p[1]) {
			return nil, fmt.Errorf("%w: bad position of %q", ErrBadCursor, ns)
		}
		c[ns] = Position{Offset: p[0], Epoch: p[1]}
	}
	return c, nil
}

// Since reads where a client asks history to start: since is an earlier
// answer's cursor, or an offset with its epoch for a pattern whose first
// token has no wildcard (an offset belongs to one namespace); empty since
// starts at the oldest event kept. Errors name the parameter at fault.
func Since(pattern, since, epoch string) (Cursor, error) {
	switch {
	case since == "":
		if epoch != "" {
			return nil, errors.New("epoch: goes with since")
		}
		return nil, nil
	case !IsOffset(since):
		if epoch != "" {
			return nil, errors.New("epoch: a cursor (since from next) holds its epochs; leave epoch out")
		}
		c, err := ParseCursor(since)
		if err != nil {
			return nil, fmt.Errorf("since: %w: want an offset such as 1732290000000-0 or an earlier answer's next", err)
		}
		return c, nil
	case !epochRE.MatchString(epoch):
		return nil, errors.New("epoch: an offset in since needs the epoch it belongs to (hex digits)")
	}
	ns, _, ok := strings.Cut(pattern, ":")
	if !ok || channel.IsPattern(ns) {
		return nil, fmt.Errorf("since: pattern %q spans several namespaces, and an offset belongs to one; use an earlier answer's next", pattern)
	}
	return Cursor{ns: {Offset: since, Epoch: epoch}}, nil
}
