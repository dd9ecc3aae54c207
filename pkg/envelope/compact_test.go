package envelope

import (
	"bytes"
	"encoding/json"
	"testing"
)

func FuzzCompact(f *testing.F) {
	for _, s := range []string{`{"a": "b c", "d":[1, 2]}`, `{"s":"quote \" and \\ , : "}`, "{\n \"x\" :\t true }", `"\u0020 "`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if !json.Valid([]byte(s)) {
			return
		}
		var want bytes.Buffer
		if err := json.Compact(&want, []byte(s)); err != nil {
			t.Fatal(err)
		}
		if got := compact([]byte(s)); !bytes.Equal(got, want.Bytes()) {
			t.Fatalf("compact(%q) = %q, want %q", s, got, want.Bytes())
		}
	})
}
