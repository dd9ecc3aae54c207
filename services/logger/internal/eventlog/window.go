package eventlog

import (
	"errors"
	"sync"

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
type Window struct {
	mu   sync.Mutex
	ring []Record
	next uint64        // number of the next record appended; record s is at ring[s%len(ring)]
	wake chan struct{} // closed by the next Append; nil while no tail waits
}

// NewWindow keeps the last size records, starting with recent (oldest
// first), e.g. from LoadRecent.
func NewWindow(size int, recent []Record) *Window {
	w := &Window{ring: make([]Record, size)}
	for _, r := range recent {
		w.put(r)
	}
	return w
}

func (w *Window) put(r Record) {
	w.ring[w.next%uint64(len(w.ring))] = r
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
}

// Follow returns a tail whose reads return the records after the one whose
// id is after, when the window still holds it, or else the last n records
// matching pattern; and then every matching record appended afterwards,
// with no gap and no overlap. Backlog records that leave the window before
// the tail has read anything are skipped; any other loss makes Read return
// ErrLagged.
func (w *Window) Follow(pattern string, n int, after string) *Tail {
	w.mu.Lock()
	top := w.next
	w.mu.Unlock()
	t := &Tail{w: w, pattern: pattern, next: top, floor: top}
	if after != "" {
		if s, ok := w.scanBack(top, func(r *Record) bool { return r.ID == after }); ok {
			t.next, t.floor = s+1, s+1
			return t
		}
	}
	if n <= 0 {
		return t
	}
	matched := 0
	s, ok := w.scanBack(top, func(r *Record) bool {
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

// scanBack calls found on the records numbered below seq, newest first,
// until it returns true, and returns that record's number. It gives up,
// returning false, at the oldest record held. It holds the lock for at most
// scanChunk records at a time.
func (w *Window) scanBack(seq uint64, found func(*Record) bool) (uint64, bool) {
	size := uint64(len(w.ring))
	for {
		w.mu.Lock()
		oldest := w.oldest()
		lo := max(seq-min(seq, scanChunk), oldest)
		for s := seq; s > lo; s-- {
			if found(&w.ring[(s-1)%size]) {
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
