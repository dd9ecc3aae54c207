package hub

import (
	"math/rand/v2"
	"sync/atomic"
	"time"
)

// minGap and maxGap bound the pause between a connection's writes.
const (
	minGap = 200 * time.Microsecond
	maxGap = 50 * time.Millisecond
)

// Pacer spaces the writes of every connection with events flowing, over
// every transport, so that the edge makes about Rate writes per second:
// while n connections have events flowing, each waits a random half to
// all of n/Rate seconds between its writes (at most 50 ms) and packs what
// arrived meanwhile into the next. A zero Rate writes as soon as an event
// waits. It is safe for concurrent use.
type Pacer struct {
	Rate    int
	flowing atomic.Int64 // connections whose writer runs
}

// Start counts a writer that begins to write; Stop, one that is done.
func (p *Pacer) Start() { p.flowing.Add(1) }

// Stop undoes Start.
func (p *Pacer) Stop() { p.flowing.Add(-1) }

// Pause makes c's writer wait its share of the gap after a write, less if
// its queue fills to half its bound meanwhile.
func (p *Pacer) Pause(c *Client) {
	if gap := p.gap(); gap > 0 {
		// A random half to all of the gap, so that writers that started
		// together do not wake together.
		c.Pause(gap/2 + rand.N(gap/2))
	}
}

// gap is the longest a writer waits after a write.
func (p *Pacer) gap() time.Duration {
	if p.Rate == 0 {
		return 0
	}
	d := time.Duration(p.flowing.Load()) * time.Second / time.Duration(p.Rate)
	if d < minGap {
		return 0
	}
	return min(d, maxGap)
}
