package redisbus

import (
	"slices"
	"strings"
	"testing"
)

// liveSet groups deliveries into publishes by the subscription each names,
// so a view that is out of step with Redis costs at most a repeat, never a
// lost publish.
func TestLiveSetGroupsDeliveriesBySubscription(t *testing.T) {
	t.Parallel()
	type delivery struct{ ch, sub, payload string }
	for _, tt := range []struct {
		name       string
		confirmed  []string // psubscribe/subscribe confirmations, in order
		deliveries []delivery
		want       [][]string // what each delivery returns
	}{
		{
			name:      "one publish through three subscriptions",
			confirmed: []string{"psubscribe o*", "psubscribe ov:*", "subscribe ov:a"},
			deliveries: []delivery{
				{"ov:a", "ov:a", "x"}, {"ov:a", "o*", "x"}, {"ov:a", "ov:*", "x"},
			},
			want: [][]string{{"o*", "ov:*", "ov:a"}, nil, nil},
		},
		{
			name:      "the same bytes twice are two publishes",
			confirmed: []string{"psubscribe ov:*", "subscribe ov:a"},
			deliveries: []delivery{
				{"ov:a", "ov:a", "x"}, {"ov:a", "ov:*", "x"}, {"ov:a", "ov:a", "x"}, {"ov:a", "ov:*", "x"},
			},
			want: [][]string{{"ov:*", "ov:a"}, nil, {"ov:*", "ov:a"}, nil},
		},
		{
			name:      "a view with a pattern Redis no longer has loses nothing",
			confirmed: []string{"psubscribe ov:*", "subscribe ov:a"}, // ov:a's unsubscribe was never seen
			deliveries: []delivery{
				{"ov:a", "ov:*", "x"}, {"ov:a", "ov:*", "x"},
			},
			want: [][]string{{"ov:*", "ov:a"}, {"ov:*", "ov:a"}},
		},
		{
			name:       "a view missing a pattern Redis has loses nothing",
			confirmed:  []string{"psubscribe ov:*"},
			deliveries: []delivery{{"ov:b", "o*", "x"}},
			want:       [][]string{{"o*", "ov:*"}},
		},
	} {
		l := newLiveSet()
		for _, c := range tt.confirmed {
			kind, name, _ := strings.Cut(c, " ")
			l.confirm(kind, name)
		}
		for i, d := range tt.deliveries {
			if got := l.deliver(d.ch, d.sub, d.payload); !slices.Equal(got, tt.want[i]) {
				t.Errorf("%s: delivery %d = %q, want %q", tt.name, i, got, tt.want[i])
			}
		}
	}
}
