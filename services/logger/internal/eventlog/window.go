package eventlog

import (
	"errors"
	"sync"

	"github.com/eventbus-suite/eventbus/pkg/bus"
	"github.com/eventbus-suite/eventbus/pkg/channel"
)

// ErrLagged is returned by Tail.Read once records the tail had still to
// read have left the window: the tail can no longer go on without a gap.
var ErrLagged = errors.New("tail fell behind: records it had not read left the window")

// scanChunk bounds the records Follow looks at while holding the lock, so
// that Append never waits long for a tail starting up.
const scanChunk = 1024

// Window keeps the most recent records, numbered in the order appended,
// for tails to read. Tails read the window itself: Append never waits for
// a tail nor does work for one, a tail holds no copy of what it has still
// to read, and a tail that falls more than the window's size behind finds
// out that it lost records. It is safe for concurrent use.
//
// Of the records with a position it also remembers, for every namespace,
// the last position appended (also of records that have left), so that a
// tail can say where it stands in the record of every namespace its
// pattern reaches (see Mark).
type Window struct {
	mu   sync.Mutex
	ring []Record
	// prev[s%len(ring)] is the position of the last record of record s's
	// namespace appended before it; zero if none is known.
	prev  []bus.Position
	next  uint64                  // number of the next record appended; record s is at ring[s%len(ring)]
	wake  chan struct{}           // closed by the next Append; nil while no tail waits
	heads map[string]bus.Position // each namespace's last position appended
	floor string                  // the oldest offset known; "" while none is
}

// NewWindow keeps the last size records, starting with those of recent
// (oldest first), e.g. from LoadRecent, whose Before and Floor say what
// came before them.
func NewWindow(size int, recent Recent) *Window {
	w := &Window{ring: make([]Record, size), prev: make([]bus.Position, size), heads: make(map[string]bus.Position), floor: recent.Floor}
	for ns, p := range recent.Before {
		w.heads[ns] = p
	}
	for _, r := range recent.Records {
		w.put(r)
	}
	return w
}

func (w *Window) put(r Record) {
	i := w.next % uint64(len(w.ring))
	var prev bus.Position
	if !r.Position.IsZero() {
		prev = w.heads[r.Stream]
		w.heads[r.Stream] = r.Position
		if w.floor == "" || CompareOffsets(r.Position.Offset, w.floor) < 0 {
			w.floor = r.Position.Offset
		}
	}
	w.ring[i], w.prev[i] = r, prev
	w.next++
}

// oldest returns the number of the oldest record held. Call with mu held.
func (w *Window) oldest() uint64 {
	return w.next - min(w.next, uint64(len(w.ring)))
}

// Append adds r, dropping the oldest record when the window is full, and
// wakes the tails waiting for it. It takes the lock only to store r.
func (w *Window) Append(r Record) {
	w.mu.Lock()
	w.put(r)
	wake := w.wake
	w.wake = nil
	w.mu.Unlock()
	if wake != nil {
		close(wake)
	}
}

// Tail reads the records matching a pattern from a window, in order. It
// is not safe for concurrent use, and needs no closing.
type Tail struct {
	w       *Window
	pattern string
	next    uint64 // number of the next record to look at
	// floor is the lowest record number the tail must not lose: before it
	// lie only backlog records not yet sent, which may be skipped.
	floor uint64
	start Mark // where the tail starts in the record
}

// Follow returns a tail whose reads return the records after the one whose
// id is after, when the window still holds it, or else the last n records
// matching pattern; and then every matching record appended afterwards,
// with no gap and no overlap. Backlog records that leave the window before
// the tail has read anything are skipped; any other loss makes Read return
// ErrLagged.
func (w *Window) Follow(pattern string, n int, after string) *Tail {
	top, heads, floor := w.snapshot(pattern)
	t := &Tail{w: w, pattern: pattern, next: top, floor: top}
	defer func() { t.start = Mark{Cursor: w.cursorAt(pattern, t.next, top, heads), Floor: floor} }()
	if after != "" {
		if s, ok := w.scanBack(top, func(_ uint64, r *Record) bool { return r.ID == after }); ok {
			t.next, t.floor = s+1, s+1
			return t
		}
	}
	if n <= 0 {
		return t
	}
	matched := 0
	s, ok := w.scanBack(top, func(_ uint64, r *Record) bool {
		if channel.Match(pattern, r.Channel) {
			matched++
		}
		return matched == n
	})
	if !ok {
		s = 0 // fewer than n match: from the oldest record held, whatever it is by then
	}
	t.next = s
	return t
}

// FollowMark returns a tail whose reads return the records after the
// point m stands at, when the window still holds that point, and then
// every matching record appended afterwards; ok is false when it does not.
// The point is the latest of the records whose positions m's cursor holds,
// each taken where it first occurs (a record written twice is taken at its
// first copy). The tail's Start is m, with the window's positions at that
// point for namespaces m does not name or names with an older offset.
func (w *Window) FollowMark(pattern string, m Mark) (t *Tail, ok bool) {
	if len(m.Cursor) == 0 {
		return nil, false
	}
	top, heads, _ := w.snapshot(pattern)
	first := make(map[string]uint64, len(m.Cursor))
	w.scanBack(top, func(s uint64, r *Record) bool {
		if p, ok := m.Cursor[r.Stream]; ok && p == r.Position {
			first[r.Stream] = s // scanning back: the last found is the first copy
		}
		return false
	})
	if len(first) == 0 {
		return nil, false
	}
	var at uint64
	for _, s := range first {
		at = max(at, s)
	}
	t = &Tail{w: w, pattern: pattern, next: at + 1, floor: at + 1, start: m.Clone()}
	for ns, p := range w.cursorAt(pattern, at+1, top, heads) {
		if q, ok := t.start.Cursor[ns]; !ok || q.Epoch == p.Epoch && CompareOffsets(p.Offset, q.Offset) > 0 {
			t.start.Advance(ns, p)
		}
	}
	return t, true
}

// Top returns the number of the next record to be appended: FollowFrom
// reads on from there.
func (w *Window) Top() uint64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.next
}

// FollowFrom returns a tail whose reads return the records matching
// pattern from number seq on (as Top returned it), with no gap: should one
// of them leave the window before the tail reads it, Read returns
// ErrLagged. Its Start is the zero Mark.
func (w *Window) FollowFrom(pattern string, seq uint64) *Tail {
	return &Tail{w: w, pattern: pattern, next: seq, floor: seq}
}

// Start returns where the tail starts in the record: for each namespace
// pattern reaches that the window knows, the position of its last record
// before the tail's first, and the oldest offset the window knew of.
func (t *Tail) Start() Mark { return t.start.Clone() }

// snapshot returns the number of the next record, the last position of
// each namespace pattern reaches, and the floor.
func (w *Window) snapshot(pattern string) (uint64, bus.Cursor, string) {
	w.mu.Lock()
	defer w.mu.Unlock()
	heads := make(bus.Cursor)
	for ns, p := range w.heads {
		if Reaches(pattern, ns) {
			heads[ns] = p
		}
	}
	return w.next, heads, w.floor
}

// cursorAt returns the positions, in the namespaces pattern reaches, before
// record number seq, given heads, those before record top: going back from top, each record with a
// position sets its namespace's to the one before it. Records that have
// left the window are skipped: it then returns the positions before the
// oldest record held, from which a tail starting at seq reads on.
func (w *Window) cursorAt(pattern string, seq, top uint64, heads bus.Cursor) bus.Cursor {
	w.scanBack(top, func(s uint64, r *Record) bool {
		if s < seq {
			return true
		}
		if r.Position.IsZero() {
			return false
		}
		ns := r.Stream
		if !Reaches(pattern, ns) {
			return false
		}
		if p := w.prev[s%uint64(len(w.ring))]; p.IsZero() {
			delete(heads, ns)
		} else {
			heads[ns] = p
		}
		return false
	})
	return heads
}

// scanBack calls found on the records numbered below seq, newest first,
// with their numbers, until it returns true, and returns that record's
// number. It gives up, returning false, at the oldest record held. It
// holds the lock for at most scanChunk records at a time; found runs under
// it.
func (w *Window) scanBack(seq uint64, found func(uint64, *Record) bool) (uint64, bool) {
	size := uint64(len(w.ring))
	for {
		w.mu.Lock()
		oldest := w.oldest()
		lo := max(seq-min(seq, scanChunk), oldest)
		for s := seq; s > lo; s-- {
			if found(s-1, &w.ring[(s-1)%size]) {
				w.mu.Unlock()
				return s - 1, true
			}
		}
		w.mu.Unlock()
		if lo == oldest || seq <= lo {
			return 0, false
		}
		seq = lo
	}
}

// Read fills dst with the next records matching the tail's pattern and
// returns how many it put there. When none is waiting it returns 0 and a
// channel that is closed once another record is appended. Once records the
// tail had still to read have left the window it returns ErrLagged, then
// and ever after. The records share their lines with the window: do not
// change them.
func (t *Tail) Read(dst []Record) (int, <-chan struct{}, error) {
	w := t.w
	size := uint64(len(w.ring))
	for {
		w.mu.Lock()
		if oldest := w.oldest(); t.next < oldest {
			if t.floor < oldest {
				w.mu.Unlock()
				return 0, nil, ErrLagged
			}
			t.next = oldest // only unsent backlog was lost
		}
		if t.next == w.next {
			if w.wake == nil {
				w.wake = make(chan struct{})
			}
			wake := w.wake
			w.mu.Unlock()
			return 0, wake, nil
		}
		k := int(min(w.next-t.next, uint64(len(dst))))
		for i := range k {
			dst[i] = w.ring[(t.next+uint64(i))%size]
		}
		t.next += uint64(k)
		w.mu.Unlock()

		n := 0
		for i := range k {
			if channel.Match(t.pattern, dst[i].Channel) {
				dst[n] = dst[i]
				n++
			}
		}
		clear(dst[n:k]) // do not keep lines alive for nothing
		if n > 0 {
			t.floor = t.next
			return n, nil, nil
		}
	}
}
