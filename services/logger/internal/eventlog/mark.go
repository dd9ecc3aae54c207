package eventlog

import (
	"cmp"
	"errors"
	"fmt"
	"maps"
	"strconv"
	"strings"

	"github.com/eventbus-suite/eventbus/pkg/bus"
)

// Mark is where a tail stands in the record: what it has passed of each
// namespace its pattern reaches. It is what a tail hands out as the SSE id
// of each event, and reads back from Last-Event-ID.
type Mark struct {
	// Cursor holds, for each namespace, the position of the last event
	// the tail passed there: what bus.History reads on from.
	Cursor bus.Cursor
	// Floor is the oldest offset the logger knew of when the tail began:
	// a namespace missing from Cursor holds nothing for the tail before
	// it, as the logger had recorded nothing of it since. "" in a mark
	// that was never handed out.
	Floor string
}

// markPrefix starts every mark's string, telling it from an envelope id
// (the SSE id before marks) and leaving room for another form.
const markPrefix = "p1."

// MaxMarkLen bounds the string ParseMark reads: a mark names every
// namespace its tail's pattern reaches, about 60 bytes each.
const MaxMarkLen = 64 << 10

// ErrNotMark is wrapped by ParseMark's error for a string that is no mark
// at all, such as an envelope id: the caller may take it for one.
var ErrNotMark = errors.New("not a position")

// String encodes m as p1.<floor>.<cursor>, where cursor is
// bus.Cursor.String (base64url): printable ASCII without spaces, safe as
// an SSE id and in a URL.
func (m Mark) String() string {
	return markPrefix + m.Floor + "." + m.Cursor.String()
}

// ParseMark reads what Mark.String made. It checks every part, as the mark
// comes from clients. A string without the p1. prefix gives an error
// wrapping ErrNotMark; one with it that is not a whole mark, an error
// wrapping bus.ErrBadCursor.
func ParseMark(s string) (Mark, error) {
	rest, ok := strings.CutPrefix(s, markPrefix)
	if !ok {
		return Mark{}, ErrNotMark
	}
	if len(s) > MaxMarkLen {
		return Mark{}, fmt.Errorf("%w: longer than %d bytes", bus.ErrBadCursor, MaxMarkLen)
	}
	floor, token, ok := strings.Cut(rest, ".")
	if !ok || !bus.IsOffset(floor) {
		return Mark{}, fmt.Errorf("%w: want p1.<offset>.<cursor>", bus.ErrBadCursor)
	}
	c, err := bus.ParseCursor(token)
	if err != nil {
		return Mark{}, err
	}
	return Mark{Cursor: c, Floor: floor}, nil
}

// After reports whether an event at p, in namespace ns, is one the tail
// has still to pass: later than the cursor's position in ns, or of another
// epoch (the stream was lost and made again), or in a namespace the cursor
// does not name. The floor is not consulted.
func (m Mark) After(ns string, p bus.Position) bool {
	q, ok := m.Cursor[ns]
	return !ok || q.Epoch != p.Epoch || CompareOffsets(p.Offset, q.Offset) > 0
}

// Advance records that the tail passed the event at p in namespace ns.
func (m *Mark) Advance(ns string, p bus.Position) {
	if m.Cursor == nil {
		m.Cursor = bus.Cursor{}
	}
	m.Cursor[ns] = p
}

// Clone returns a copy of m that shares nothing with it.
func (m Mark) Clone() Mark {
	return Mark{Cursor: maps.Clone(m.Cursor), Floor: m.Floor}
}

// NamespaceOf returns the first token of ch: the namespace whose stream
// records it, on a bus with one stream per namespace.
func NamespaceOf(ch string) string {
	ns, _, _ := strings.Cut(ch, ":")
	return ns
}

// StreamOf names the stream a channel's events are in: the bus's
// History.StreamOf, or NamespaceOf on a bus with one stream per namespace.
type StreamOf func(ch string) string

// Reaches reports whether a channel matching pattern can be in stream, a
// namespace or one partition of it ("order.3"): its namespace is the one
// the pattern's first token names or, when that token has a wildcard, any
// namespace starting with the text before it. It is the rule by which
// bus.History chooses the streams it reads.
func Reaches(pattern, stream string) bool {
	ns, _, _ := strings.Cut(stream, ".")
	literal, _, wild := strings.Cut(pattern, "*")
	if first, _, ok := strings.Cut(literal, ":"); ok || !wild {
		return first == ns
	}
	return strings.HasPrefix(ns, literal)
}

// CompareOffsets orders stream offsets "<ms>-<seq>" as numbers; one that
// is no offset counts as 0-0.
func CompareOffsets(a, b string) int {
	am, as := splitOffset(a)
	bm, bs := splitOffset(b)
	return cmp.Or(cmp.Compare(am, bm), cmp.Compare(as, bs))
}

func splitOffset(o string) (uint64, uint64) {
	ms, seq, _ := strings.Cut(o, "-")
	m, _ := strconv.ParseUint(ms, 10, 64)
	s, _ := strconv.ParseUint(seq, 10, 64)
	return m, s
}
