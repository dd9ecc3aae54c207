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

// While the hub's dispatch is more than strainLag behind the bus, the edge
// is short of CPU: for strainHold after that, the Pacer aims at a
// strainSlowdown-th of its Rate, with pauses of up to maxStrainedGap
// (Client.Pause still holds none past half of its delay bound), so
// that each write carries more and the writes cost the edge less, instead
// of messages queueing before the dispatch, where no client's queue bound
// sees them. Measured (docs/benchmarks.md): 1,000 subscribers offered
// 600 events/s, more than this machine sustains, got 435,000–592,000
// deliveries/s at p99 0.23–0.58 s, where the Pacer at its Rate left
// 364,000–388,000/s at p99 2.3–6.4 s.
const (
	strainLag      = 20 * time.Millisecond
	strainHold     = time.Second
	strainSlowdown = 3
	maxStrainedGap = 150 * time.Millisecond
)

// Pacer spaces the writes of every connection with events flowing, over
// every transport, so that the edge makes about Rate writes per second:
// while n connections have events flowing, each waits a random half to
// all of n/Rate seconds between its writes (at most 50 ms) and packs what
// arrived meanwhile into the next. A zero Rate writes as soon as an event
// waits. While strained (Behind), it aims lower. It is safe for
// concurrent use.
type Pacer struct {
	Rate    int
	flowing atomic.Int64 // connections whose writer runs
	// strained is until when, in Unix nanoseconds, the Pacer aims lower.
	strained atomic.Int64
	now      func() time.Time // tests set it; nil: time.Now
}

// Start counts a writer that begins to write; Stop, one that is done.
func (p *Pacer) Start() { p.flowing.Add(1) }

// Stop undoes Start.
func (p *Pacer) Stop() { p.flowing.Add(-1) }

// Behind tells the Pacer how long the message the hub dispatches at now
// waited since the bus read it: past strainLag, the Pacer is strained
// until strainHold from now.
func (p *Pacer) Behind(lag time.Duration, now time.Time) {
	if lag > strainLag {
		p.strained.Store(now.Add(strainHold).UnixNano())
	}
}

// Strained reports whether the Pacer aims lower at now.
func (p *Pacer) Strained(now time.Time) bool { return now.UnixNano() < p.strained.Load() }

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
	rate, most := p.Rate, maxGap
	if p.strained.Load() != 0 && p.Strained(p.clock()) {
		rate, most = max(p.Rate/strainSlowdown, 1), maxStrainedGap
	}
	d := time.Duration(p.flowing.Load()) * time.Second / time.Duration(rate)
	if d < minGap {
		return 0
	}
	return min(d, most)
}

func (p *Pacer) clock() time.Time {
	if p.now != nil {
		return p.now()
	}
	return time.Now()
}
