package hub

// Disconnect says why the edge ends a connection, in terms every
// transport maps to its own close form (a WebSocket close frame, an SSE
// "close" event, an MQTT DISCONNECT's reason code). Code is one of the
// close codes below, which docs/protocol.md lists.
type Disconnect struct {
	Code   int
	Reason string
}

// The edge's close codes: this is the one list, for every transport.
// Besides these, the WebSocket transports use the standard 1002 (protocol
// error), 1007 (text that is not UTF-8), 1008 (policy) and 1009 (message
// too big).
const (
	CloseGoingAway        = 1001 // the edge is shutting down: reconnect to another
	CloseBroken           = 1006 // the connection failed under a write: nothing more can be sent
	CloseResume           = 1012 // the edge lost events it could not read back: reconnect and resume
	CloseTryAgain         = 1013 // the edge cannot serve it now (Redis away): try again later
	CloseUnauthorized     = 4001 // no valid token in time, a token of another user, or one that expired
	CloseHeartbeatTimeout = 4002 // no pong in time
	CloseRevoked          = 4003 // the connection's token was revoked
	CloseDisconnected     = 4004 // the API disconnected the user
	CloseTakenOver        = 4005 // an MQTT client id connected again
	CloseSlow             = 4008 // too slow: the send queue overflowed, or waited too long
	CloseTooManyConns     = 4029 // past the user's (or address's) connections
)

// The disconnects the edge decides on with a fixed reason.
var (
	// DisconnectShutdown: the edge is going away; reconnect to another.
	DisconnectShutdown = Disconnect{CloseGoingAway, "server shutting down"}
	// DisconnectSlow: the client read too slowly and its queue overflowed.
	DisconnectSlow = Disconnect{CloseSlow, "too slow: the send queue overflowed"}
	// DisconnectSlowDelay: the client read too slowly and the oldest frame
	// in its queue waited longer than Options.QueueDelay. The same code as
	// DisconnectSlow, and the same advice: reconnect and resume.
	DisconnectSlowDelay = Disconnect{CloseSlow, "too slow: a frame waited too long in the send queue"}
	// DisconnectBroken: the connection failed under a write. Nothing can
	// be sent on it any more: transports drop it without a close message,
	// which a browser reports as 1006.
	DisconnectBroken = Disconnect{CloseBroken, "connection broken"}
	// DisconnectTooManyConnections closes a connection past its user's
	// (or address's) bound.
	DisconnectTooManyConnections = Disconnect{CloseTooManyConns, "too many connections"}
	// DisconnectResume closes the connections of an edge that lost events
	// it could not read back: the client reconnects and resumes from its
	// own positions, and learns whether it got everything.
	DisconnectResume = Disconnect{CloseResume, "the edge lost events while Redis was away: reconnect and resume"}
	// DisconnectRevoked and DisconnectDisconnected carry out the API's
	// commands: a revoked token, a user disconnected.
	DisconnectRevoked      = Disconnect{CloseRevoked, "revoked"}
	DisconnectDisconnected = Disconnect{CloseDisconnected, "disconnected"}
	// DisconnectTakenOver closes an MQTT connection whose client id
	// connected again.
	DisconnectTakenOver = Disconnect{CloseTakenOver, "session taken over"}
)
