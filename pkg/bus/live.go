package bus

import "context"

// Live adapts a Subscription to the Consumer interface, for a bus that
// keeps no history (BUS_HISTORY=off): Fetch returns what the subscription
// delivers live, and Ack and Lag do nothing. It keeps none of a group's
// promises: what arrives while its reader is not listening, or was
// fetched and not handled, is lost.
func Live(sub Subscription) Consumer { return live{sub} }

type live struct{ sub Subscription }

func (l live) Fetch(ctx context.Context, n int) ([]Delivery, error) {
	var ds []Delivery
	for len(ds) == 0 {
		select {
		case m, ok := <-l.sub.Messages():
			if !ok {
				return nil, ErrClosed
			}
			if !m.Gap { // what it stands for is lost: live keeps no promises
				ds = append(ds, delivery(m))
			}
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	for len(ds) < n {
		select {
		case m, ok := <-l.sub.Messages():
			if !ok {
				return ds, nil // the next Fetch reports it
			}
			if !m.Gap {
				ds = append(ds, delivery(m))
			}
		default:
			return ds, nil
		}
	}
	return ds, nil
}

func delivery(m Message) Delivery {
	return Delivery{Event: Event{Channel: m.Channel, Payload: m.Payload, Position: m.Position}}
}

func (live) Ack(context.Context, ...Delivery) error    { return nil }
func (live) Extend(context.Context, ...Delivery) error { return nil }
func (live) Lag(context.Context) (int64, error)        { return 0, nil }
func (l live) Close() error                            { return l.sub.Close() }
