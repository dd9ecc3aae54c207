package httpapi

import "testing"

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
