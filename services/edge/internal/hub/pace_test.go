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
