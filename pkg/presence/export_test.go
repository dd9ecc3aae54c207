package presence

// Encode gives m as the sorted set holds it, for tests that age entries.
func Encode(m Member) string { return m.encode() }

// Decode reads a member as the sorted set holds it.
func Decode(s string) (Member, bool) { return decode(s) }
