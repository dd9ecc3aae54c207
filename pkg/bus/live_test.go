package bus_test

import (
	"context"
	"testing"

	"github.com/eventbus-suite/eventbus/pkg/bus"
)

type chanSub struct{ msgs chan bus.Message }

func (s chanSub) Messages() <-chan bus.Message          { return s.msgs }
func (chanSub) Add(context.Context, ...string) error    { return nil }
func (chanSub) Remove(context.Context, ...string) error { return nil }
func (chanSub) Live() bool                              { return true }
func (s chanSub) Close() error                          { close(s.msgs); return nil }

// A live consumer hands over events only: a Gap carries none.
func TestLiveSkipsGaps(t *testing.T) {
	t.Parallel()
	sub := chanSub{make(chan bus.Message, 4)}
	sub.msgs <- bus.Message{Gap: true}
	sub.msgs <- bus.Message{Channel: "a:b", Payload: []byte("1")}
	sub.msgs <- bus.Message{Gap: true}
	sub.msgs <- bus.Message{Channel: "a:b", Payload: []byte("2")}
	c := bus.Live(sub)
	ds, err := c.Fetch(t.Context(), 10)
	if err != nil || len(ds) != 2 || string(ds[0].Payload) != "1" || string(ds[1].Payload) != "2" {
		t.Fatalf("Fetch = %+v, %v; want the two events", ds, err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Fetch(t.Context(), 1); err != bus.ErrClosed {
		t.Fatalf("Fetch after Close = %v, want ErrClosed", err)
	}
}
