package hub

import (
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/eventbus-suite/eventbus/pkg/presence"
	"github.com/eventbus-suite/eventbus/pkg/token"
)

// Client is one connection as the hub sees it. Replies and events share
// one queue, bounded in bytes and in time (how long its oldest frame may
// wait), so a client gets them in the order they were decided, and one
// that falls behind is closed rather than fed ever staler events. The queue costs nothing until a frame waits, and no
// writer runs while none does: an idle connection holds no buffer and no
// goroutine for sending.
type Client struct {
	id        string // unique across edges and restarts
	transport string // as presence names it: "ws", "sse", "mqtt", "mqtt-tcp"
	enc       Encoding
	onReady   func()
	onKick    func(Disconnect)
	maxBytes  int
	maxDelay  time.Duration    // 0: no bound in time
	now       func() time.Time // the hub's clock
	slow      func()           // counts a slow-consumer close
	once      sync.Once
	kicked    atomic.Bool
	subs      map[string]struct{} // guarded by Hub.mu; nil until the first subscription
	replays   map[string]*replay  // guarded by Hub.mu: subscriptions catching up
	who       *identity           // guarded by Hub.mu
	presence  map[string]struct{} // guarded by Hub.mu: channels whose joins and leaves it wants
	gone      chan struct{}       // closed when the client is kicked or leaves
	goneOnce  sync.Once
	token     atomic.Pointer[Token] // the token it authenticated with, for revocations

	mu      sync.Mutex
	queue   []Frame       // frames waiting, in order
	bytes   int           // their length in all
	oldest  time.Time     // when the first of them was queued
	closing *Disconnect   // to do once the queue is written
	writing bool          // onReady was called and Take has not found the queue empty since
	pausing bool          // the writer is in Pause
	room    chan struct{} // made by a pushWait that waits for room, closed by Take: wakes them all

	// Made on the writer's first Pause. push signals hurry, with mu held,
	// to end a Pause early when the queue is half full.
	hurry chan struct{}
	timer timer // only the writer uses it
}

// timer is the part of *time.Timer that Pause uses; tests give a fake.
type timer interface {
	C() <-chan time.Time
	Reset(time.Duration)
	Stop()
}

type realTimer struct{ *time.Timer }

func (t realTimer) C() <-chan time.Time   { return t.Timer.C }
func (t realTimer) Reset(d time.Duration) { t.Timer.Reset(d) }
func (t realTimer) Stop()                 { t.Timer.Stop() }

// newTimer makes the timer of a client's first Pause.
var newTimer = func(d time.Duration) timer { return realTimer{time.NewTimer(d)} }

// Token is what a connection's token says of it, for revocations and for
// the events it is given.
type Token struct {
	Sub, ID  string // its user and its jti
	IssuedAt time.Time
	// Except are the patterns whose events the connection is not given
	// although its subscriptions match them (token.Claims.Except).
	Except []string
}

// TokenOf is what c says of its connection.
func TokenOf(c *token.Claims) Token {
	t := Token{Sub: c.Subject, ID: c.ID, Except: c.Except}
	if c.IssuedAt != nil {
		t.IssuedAt = c.IssuedAt.Time
	}
	return t
}

// SetToken records the token the connection authenticated with.
func (c *Client) SetToken(t Token) { c.token.Store(&t) }

// withholds reports whether the client's token keeps an event on ch from
// it (Token.Except).
func (c *Client) withholds(ch string) bool {
	t := c.token.Load()
	return t != nil && len(t.Except) > 0 && token.Withheld(t.Sub, t.Except, ch)
}

// through returns the subscriptions among subs, those of c that matched
// ev, that ev goes to c through: all of them, but for a channel's joins
// and leaves, which go only through c's subscription to the channel
// itself, and only when it asked for them (none through a pattern, nor
// before that subscription is in place). Call with Hub.mu held.
func (c *Client) through(ev *Event, subs []string) []string {
	if !ev.presence {
		return subs
	}
	if _, ok := c.presence[ev.Channel]; !ok {
		return nil
	}
	i := slices.Index(subs, ev.Channel)
	if i < 0 {
		return nil
	}
	return subs[i : i+1 : i+1]
}

// ID is the connection's id, unique across edges and restarts: presence
// names it so.
func (c *Client) ID() string { return c.id }

// member is c as presence records it on its channels. Call with Hub.mu
// held.
func (c *Client) member() presence.Member {
	user, _ := strings.CutPrefix(c.who.name, "user:")
	if isAddress(c.who.name) {
		user = ""
	}
	return presence.Member{Client: c.id, User: user, Transport: c.transport}
}

// Send queues a frame for the client: a reply, or a notice of its own. A
// client whose queue is full is kicked as too slow.
func (c *Client) Send(data []byte) {
	if d, ok := c.push(Frame{Data: data}, c.now()); !ok {
		c.tooSlow(d)
	}
}

// sendSubscribed queues the reply of c's subscription to p, which began
// as rec says, as Send does.
func (c *Client) sendSubscribed(p string, rec Recovery, reply func(Recovery) []byte) {
	if d, ok := c.push(subscribedFrame(p, rec, reply), c.now()); !ok {
		c.tooSlow(d)
	}
}

// subscribedFrame is the reply of the subscription to p, which began as
// rec says.
func subscribedFrame(p string, rec Recovery, reply func(Recovery) []byte) Frame {
	return Frame{Kind: FrameSubscribed, Data: reply(rec), Channel: p, Recovery: &rec}
}

// tooSlow closes c with d, one of the slow disconnects, and counts it.
func (c *Client) tooSlow(d Disconnect) {
	if !c.kicked.Load() {
		c.slow()
		c.Kick(d)
	}
}

// push queues frame at now, calling onReady if no writer runs. It reports
// false, queueing nothing, with the slow disconnect that applies, when the
// frame would take the queue past its bound in bytes or when the oldest
// frame waiting has waited longer than maxDelay; a queue with nothing
// waiting takes any frame, however large.
func (c *Client) push(f Frame, now time.Time) (Disconnect, bool) {
	if c.kicked.Load() {
		return DisconnectSlow, false // tooSlow does nothing: the kick said why
	}
	c.mu.Lock()
	if c.closing != nil {
		c.mu.Unlock()
		return Disconnect{}, true // a client being closed drops frames quietly
	}
	if len(c.queue) > 0 {
		if c.bytes+len(f.Data) > c.maxBytes {
			c.mu.Unlock()
			return DisconnectSlow, false
		}
		if c.maxDelay > 0 && now.Sub(c.oldest) > c.maxDelay {
			c.mu.Unlock()
			return DisconnectSlowDelay, false
		}
	} else {
		c.oldest = now
	}
	c.queue = append(c.queue, f)
	c.bytes += len(f.Data)
	start := !c.writing
	c.writing = true
	if c.pausing && c.bytes >= c.maxBytes/2 {
		c.pausing = false
		c.hurry <- struct{}{}
	}
	c.mu.Unlock()
	if start {
		c.onReady()
	}
	return Disconnect{}, true
}

// Take appends the waiting frames to dst, in order, and empties the queue.
// When none wait it returns dst as it is, and the writer that called it must
// stop: the next frame calls onReady again. If the client is to be closed
// once its queue is written, Take kicks it then.
func (c *Client) Take(dst []Frame) []Frame {
	c.mu.Lock()
	if len(c.queue) == 0 {
		c.writing = false
		if cap(c.queue) > 16 {
			c.queue = nil // a burst is over: give its memory back
		}
		closing := c.closing
		c.mu.Unlock()
		if closing != nil {
			c.Kick(*closing)
		}
		return dst
	}
	dst = append(dst, c.queue...)
	clear(c.queue)
	c.queue = c.queue[:0]
	c.bytes = 0
	if c.room != nil {
		close(c.room)
		c.room = nil
	}
	c.mu.Unlock()
	return dst
}

// pushWait queues f once the queue has room for it, leaving half the bound
// to live events, and waits for the writer while it has none: a replay of
// many events goes at the pace the client reads. It reports false, queueing
// nothing, when the client is gone or being closed, or when cancelled is
// set as f's turn comes (checked under the queue's lock, so a reply queued
// after cancelled was set comes after every frame pushWait queued).
func (c *Client) pushWait(f Frame, cancelled *atomic.Bool) bool {
	for {
		if c.kicked.Load() {
			return false
		}
		c.mu.Lock()
		if c.closing != nil || cancelled.Load() {
			c.mu.Unlock()
			return false
		}
		if len(c.queue) == 0 || c.bytes+len(f.Data) <= c.maxBytes/2 {
			if len(c.queue) == 0 {
				c.oldest = c.now()
			}
			c.queue = append(c.queue, f)
			c.bytes += len(f.Data)
			start := !c.writing
			c.writing = true
			c.mu.Unlock()
			if start {
				c.onReady()
			}
			return true
		}
		if c.room == nil {
			c.room = make(chan struct{})
		}
		room := c.room
		if c.pausing { // a writer pausing to pack more: there is enough
			c.pausing = false
			c.hurry <- struct{}{}
		}
		c.mu.Unlock()
		select {
		case <-room:
		case <-c.gone:
			return false
		}
	}
}

// end marks the client gone, waking a pushWait.
func (c *Client) end() { c.goneOnce.Do(func() { close(c.gone) }) }

// CloseAfter closes the connection with d once every frame queued so far
// is written, so that a reply explaining the close reaches the client
// first. Frames queued afterwards are dropped.
func (c *Client) CloseAfter(d Disconnect) {
	c.mu.Lock()
	if c.closing == nil {
		c.closing = &d
	}
	closing, idle := *c.closing, !c.writing
	if c.pausing {
		c.pausing = false
		c.hurry <- struct{}{}
	}
	c.mu.Unlock()
	if idle {
		c.Kick(closing)
	}
}

// Closing reports whether the connection is being closed: kicked, or to
// be closed once its queue is written. Its requests need no more answers.
func (c *Client) Closing() bool {
	if c.kicked.Load() {
		return true
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closing != nil
}

// Pause waits d, or less if the queue fills to half its bound meanwhile,
// and never past half the delay bound of the oldest frame waiting: a
// writer pausing to pack more events into its next write must not let the
// queue overflow, in bytes or in time, which would close a client that
// reads fast enough.
func (c *Client) Pause(d time.Duration) {
	c.mu.Lock()
	if c.maxDelay > 0 {
		left := c.maxDelay / 2
		if len(c.queue) > 0 {
			left -= c.now().Sub(c.oldest)
		}
		d = min(d, left)
	}
	if d <= 0 || c.bytes >= c.maxBytes/2 || c.closing != nil {
		c.mu.Unlock()
		return
	}
	if c.hurry == nil {
		c.hurry = make(chan struct{}, 1)
		c.timer = newTimer(d)
	} else {
		c.timer.Reset(d)
	}
	c.pausing = true
	c.mu.Unlock()
	select {
	case <-c.timer.C():
	case <-c.hurry:
		c.timer.Stop()
	}
	c.mu.Lock()
	c.pausing = false
	select {
	case <-c.hurry: // sent as the timer fired: not for the next Pause
	default:
	}
	c.mu.Unlock()
}

// queued returns how many bytes wait to be written.
func (c *Client) queued() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.bytes
}

// Kick asks for the connection to be closed with d at once. The first call
// wins: it calls the Join's onKick, which must not block, and the hub stops
// queueing frames for c.
func (c *Client) Kick(d Disconnect) {
	c.once.Do(func() {
		c.kicked.Store(true)
		c.end()
		c.onKick(d)
	})
}
