// Package mqttwire reads and writes MQTT packets over a byte stream with
// mochi-mqtt's codec, for every party of the suite that speaks MQTT: the
// edge, its tests and the bench client. It frames packets only: over
// WebSocket a packet may span messages and a message may hold several.
package mqttwire

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"

	"github.com/mochi-mqtt/server/v2/packets"
)

// ErrTooLarge is a packet past the reader's bound.
var ErrTooLarge = errors.New("packet too large")

// Read reads the next packet of a connection speaking MQTT version (zero
// before its CONNECT says which), of any type. A packet whose remaining
// length is over maxBytes is refused with ErrTooLarge before its body is
// read. A malformed packet returns the packets.Code that says why.
func Read(r *bufio.Reader, version byte, maxBytes int) (packets.Packet, error) {
	var pk packets.Packet
	b, err := r.ReadByte()
	if err != nil {
		return pk, err
	}
	if err := pk.FixedHeader.Decode(b); err != nil {
		return pk, err
	}
	n, used, err := packets.DecodeLength(r)
	switch {
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return pk, io.ErrUnexpectedEOF
	case err != nil, used > 4:
		// At most four bytes (MQTT 1.5.5); mochi takes a fifth.
		return pk, packets.ErrMalformedVariableByteInteger
	case n > maxBytes:
		return pk, fmt.Errorf("%w: %d bytes, at most %d", ErrTooLarge, n, maxBytes)
	}
	pk.FixedHeader.Remaining = n
	body := make([]byte, n)
	if _, err := io.ReadFull(r, body); err != nil {
		return pk, io.ErrUnexpectedEOF
	}
	pk.ProtocolVersion = version
	return pk, decode(&pk, body)
}

// decode fills pk from the body of a packet. mochi-mqtt's decoders index
// past the end of some malformed bodies (a SUBSCRIBE's, found by the
// edge's FuzzReadPacket): a panic there is a malformed packet like any
// other.
func decode(pk *packets.Packet, body []byte) (err error) {
	defer func() {
		if recover() != nil {
			err = packets.ErrMalformedPacket
		}
	}()
	switch pk.FixedHeader.Type {
	case packets.Connect:
		return pk.ConnectDecode(body)
	case packets.Connack:
		return pk.ConnackDecode(body)
	case packets.Publish:
		return pk.PublishDecode(body)
	case packets.Puback:
		return pk.PubackDecode(body)
	case packets.Pubrec:
		return pk.PubrecDecode(body)
	case packets.Pubrel:
		return pk.PubrelDecode(body)
	case packets.Pubcomp:
		return pk.PubcompDecode(body)
	case packets.Subscribe:
		return pk.SubscribeDecode(body)
	case packets.Suback:
		return pk.SubackDecode(body)
	case packets.Unsubscribe:
		return pk.UnsubscribeDecode(body)
	case packets.Unsuback:
		return pk.UnsubackDecode(body)
	case packets.Pingreq:
		return pk.PingreqDecode(body)
	case packets.Pingresp:
		return pk.PingrespDecode(body)
	case packets.Disconnect:
		return pk.DisconnectDecode(body)
	case packets.Auth:
		return pk.AuthDecode(body)
	}
	return packets.ErrProtocolViolation
}

// Append encodes pk, of any type, onto buf.
func Append(buf *bytes.Buffer, pk *packets.Packet) error {
	switch pk.FixedHeader.Type {
	case packets.Connect:
		return pk.ConnectEncode(buf)
	case packets.Connack:
		return pk.ConnackEncode(buf)
	case packets.Publish:
		return pk.PublishEncode(buf)
	case packets.Puback:
		return pk.PubackEncode(buf)
	case packets.Pubrec:
		return pk.PubrecEncode(buf)
	case packets.Pubrel:
		return pk.PubrelEncode(buf)
	case packets.Pubcomp:
		return pk.PubcompEncode(buf)
	case packets.Subscribe:
		return pk.SubscribeEncode(buf)
	case packets.Suback:
		return pk.SubackEncode(buf)
	case packets.Unsubscribe:
		return pk.UnsubscribeEncode(buf)
	case packets.Unsuback:
		return pk.UnsubackEncode(buf)
	case packets.Pingreq:
		return pk.PingreqEncode(buf)
	case packets.Pingresp:
		return pk.PingrespEncode(buf)
	case packets.Disconnect:
		return pk.DisconnectEncode(buf)
	case packets.Auth:
		return pk.AuthEncode(buf)
	}
	return fmt.Errorf("mqtt: no packet type %d", pk.FixedHeader.Type)
}
