package eventlog

import (
	"sync"

	"github.com/eventbus-suite/eventbus/pkg/channel"
)

// tailBuffer is how many records a live tail may have waiting before it is
// cut off as too slow.
const tailBuffer = 4096

// Window keeps the most recent records and hands every new one to the live
// tails whose pattern matches. It is safe for concurrent use.
type Window struct {
	mu    sync.Mutex
	ring  []Record
	next  int // where the next record goes
	full  bool
	tails map[*Tail]struct{}
}

// NewWindow keeps the last size records, starting with recent (oldest
// first), e.g. from LoadRecent.
func NewWindow(size int, recent []Record) *Window {
	w := &Window{ring: make([]Record, size), tails: make(map[*Tail]struct{})}
	for _, r := range recent {
		w.put(r)
	}
	return w
}

func (w *Window) put(r Record) {
	w.ring[w.next] = r
	w.next = (w.next + 1) % len(w.ring)
	if w.next == 0 {
		w.full = true
	}
}

// Append adds r and offers it to the matching tails. A tail whose buffer is
// full is closed with Lagged set, never waited for.
func (w *Window) Append(r Record) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.put(r)
	for t := range w.tails {
		if !channel.Match(t.pattern, r.Channel) {
			continue
		}
		select {
		case t.c <- r:
		default:
			t.Lagged = true
			w.drop(t)
		}
	}
}

// records returns the window's records, oldest first. Call with mu held.
func (w *Window) records() []Record {
	if !w.full {
		return w.ring[:w.next]
	}
	return append(append([]Record(nil), w.ring[w.next:]...), w.ring[:w.next]...)
}

// Tail is a live view of the records matching a pattern.
type Tail struct {
	w       *Window
	pattern string
	c       chan Record
	// Lagged is set when the tail fell tailBuffer records behind and was
	// closed; read it only after C is closed.
	Lagged bool
}

// C delivers the records appended after Follow returned, in order. It is
// closed by Close, or when the tail falls too far behind.
func (t *Tail) C() <-chan Record { return t.c }

// Close stops the tail.
func (t *Tail) Close() {
	t.w.mu.Lock()
	defer t.w.mu.Unlock()
	t.w.drop(t)
}

func (w *Window) drop(t *Tail) {
	if _, ok := w.tails[t]; ok {
		delete(w.tails, t)
		close(t.c)
	}
}

// Follow returns the backlog of records matching pattern and a live tail of
// the records appended afterwards, with no gap and no overlap between them.
// The backlog is the records after the one whose id is after, when the
// window still holds it; otherwise the last n matching records.
func (w *Window) Follow(pattern string, n int, after string) ([]Record, *Tail) {
	w.mu.Lock()
	defer w.mu.Unlock()
	all := w.records()
	start := -1
	if after != "" {
		for i := len(all) - 1; i >= 0; i-- {
			if all[i].ID == after {
				start = i + 1
				break
			}
		}
	}
	var backlog []Record
	if start >= 0 {
		for _, r := range all[start:] {
			if channel.Match(pattern, r.Channel) {
				backlog = append(backlog, r)
			}
		}
	} else {
		for i := len(all) - 1; i >= 0 && len(backlog) < n; i-- {
			if channel.Match(pattern, all[i].Channel) {
				backlog = append(backlog, all[i])
			}
		}
		for i, j := 0, len(backlog)-1; i < j; i, j = i+1, j-1 {
			backlog[i], backlog[j] = backlog[j], backlog[i]
		}
	}
	t := &Tail{w: w, pattern: pattern, c: make(chan Record, tailBuffer)}
	w.tails[t] = struct{}{}
	return backlog, t
}
