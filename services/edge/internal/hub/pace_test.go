package hub

import (
	"testing"
	"time"
)

func TestPacerKeepsTheEdgeWithinItsWriteRate(t *testing.T) {
	for _, tt := range []struct {
		rate    int
		flowing int64
		want    time.Duration
	}{
		{rate: 0, flowing: 1000, want: 0},  // pacing off
		{rate: 30000, flowing: 1, want: 0}, // 33 µs: not worth a pause
		{rate: 30000, flowing: 300, want: 10 * time.Millisecond},
		{rate: 30000, flowing: 1000, want: time.Second / 30}, // each of 1,000 writes 30 times a second
		{rate: 30000, flowing: 3000, want: maxGap},           // 100 ms would be too late
	} {
		p := &Pacer{Rate: tt.rate}
		p.flowing.Store(tt.flowing)
		if got := p.gap(); got != tt.want {
			t.Errorf("rate %d, %d flowing: gap %v, want %v", tt.rate, tt.flowing, got, tt.want)
		}
	}
}

// While the dispatch is more than strainLag behind, and for strainHold
// after, the Pacer aims at a third of its rate with longer pauses; then it
// is back to its rate.
func TestPacerStrainsWhileTheDispatchIsBehind(t *testing.T) {
	at := time.Unix(1_000_000, 0)
	p := &Pacer{Rate: 30000, now: func() time.Time { return at }}
	p.flowing.Store(1000)
	if got := p.gap(); got != time.Second/30 {
		t.Fatalf("before any lag: gap %v, want %v", got, time.Second/30)
	}
	p.Behind(strainLag, at) // at the bound, not past it
	if got := p.gap(); got != time.Second/30 || p.Strained(at) {
		t.Fatalf("%v behind: gap %v, strained %v; want %v, false", strainLag, got, p.Strained(at), time.Second/30)
	}
	p.Behind(strainLag+time.Millisecond, at)
	if got := p.gap(); got != time.Second/10 || !p.Strained(at) {
		t.Fatalf("%v behind: gap %v, strained %v; want %v, true", strainLag+time.Millisecond, got, p.Strained(at), time.Second/10)
	}
	p.flowing.Store(3000)
	if got := p.gap(); got != maxStrainedGap {
		t.Fatalf("strained with 3,000 flowing: gap %v, want %v", got, maxStrainedGap)
	}
	p.flowing.Store(1000)
	at = at.Add(strainHold - time.Nanosecond)
	if !p.Strained(at) {
		t.Fatal("strained no longer just before strainHold passed")
	}
	at = at.Add(time.Nanosecond)
	if got := p.gap(); got != time.Second/30 || p.Strained(at) {
		t.Fatalf("strainHold after the lag: gap %v, strained %v; want %v, false", got, p.Strained(at), time.Second/30)
	}
}
