package httpapi

import (
	"net/http"
	"net/url"
	"testing"

	"github.com/eventbus-suite/eventbus/pkg/channel"
)

// FuzzDecodeEvent feeds arbitrary bodies to every decoder of outside input:
// none may panic, and every error must be the caller's (4xx), never a 500.
func FuzzDecodeEvent(f *testing.F) {
	for _, s := range []string{
		`{"type":"order.placed","data":{"order_id":"o","user_id":"u","total":1,"currency":"EUR"}}`,
		`{"specversion":"1.0","id":"1","source":"s","type":"a.b","ext":true,"data":{"x":1}}`,
		`[{"type":"a.b"},{"type":"Bad"}]`,
		"{\"type\":\"a.b\"}\n{\"type\":\"c.d\"}\n",
		`{"type":"user.created","data":{"email":5}}`,
		`{"specversion":"1.0","time":"yesterday","data_base64":"AA=="}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		check := func(what string, err error) {
			if err == nil {
				return
			}
			if ae, _ := toAPIError(err); ae.status/100 != 4 {
				t.Fatalf("%s(%q) = %v, mapped to %d; want a 4xx", what, body, err, ae.status)
			}
		}
		env, err := decodeSimple(body)
		check("decodeSimple", err)
		if err == nil && env.GetType() == "" {
			t.Fatalf("decodeSimple(%q) accepted an event without type", body)
		}
		_, err = decodeCloudEvent(body)
		check("decodeCloudEvent", err)
		raws, err := splitBatch(body)
		check("splitBatch", err)
		if err == nil && (len(raws) == 0 || len(raws) > MaxBatch) {
			t.Fatalf("splitBatch(%q) = %d events, want 1 to %d", body, len(raws), MaxBatch)
		}
	})
}

// FuzzPresenceQuery: no query of GET /v1/presence panics its reader, and
// what it refuses is the caller's (400); what it takes is a valid channel
// that keeps presence and a limit within bounds.
func FuzzPresenceQuery(f *testing.F) {
	for _, s := range []string{
		"channel=lobby:demo", "channel=lobby:demo&limit=0", "channel=notify:user:42&limit=10000", "channel=a&limit=10001",
		"channel=eventbus:edges", "channel=&limit=1", "limit=-1", "channel=a%00b", "channel=a:b&limit=1e3", "channel=a&channel=b&limit=+5",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		q, err := url.ParseQuery(raw)
		if err != nil {
			return
		}
		ch, limit, err := presenceQuery(q)
		if err != nil {
			if ae, _ := toAPIError(err); ae.status != http.StatusBadRequest || ch != "" {
				t.Fatalf("presenceQuery(%q) refused with %d %v, want 400", raw, ae.status, err)
			}
			return
		}
		if channel.Validate(ch) != nil || channel.Reserved(ch) || ch != q.Get("channel") || limit < 0 || limit > MaxPresenceLimit {
			t.Fatalf("presenceQuery(%q) = %q, %d", raw, ch, limit)
		}
	})
}
