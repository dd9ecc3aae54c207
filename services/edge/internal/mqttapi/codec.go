package mqttapi

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"

	"github.com/mochi-mqtt/server/v2/packets"
)

// The MQTT wire format is mochi-mqtt's packets package: this file only
// frames packets out of the byte stream the WebSocket carries, where a
// packet may span messages and a message may hold several packets.

// errTooLarge is a packet past the connection's bound.
var errTooLarge = errors.New("packet too large")

// readPacket reads the next packet of a connection speaking MQTT version
// (zero before its CONNECT says which). A packet whose remaining length
// is over maxBytes is refused before its body is read. A malformed packet
// returns the packets.Code that says why.
func readPacket(r *bufio.Reader, version byte, maxBytes int) (packets.Packet, error) {
	var pk packets.Packet
	b, err := r.ReadByte()
	if err != nil {
		return pk, err
	}
	if err := pk.FixedHeader.Decode(b); err != nil {
		return pk, err
	}
	n, _, err := packets.DecodeLength(r)
	switch {
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return pk, io.ErrUnexpectedEOF
	case err != nil:
		return pk, packets.ErrMalformedVariableByteInteger
	case n > maxBytes:
		return pk, fmt.Errorf("%w: %d bytes, at most %d", errTooLarge, n, maxBytes)
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
// past the end of some malformed bodies (a SUBSCRIBE's, found by
// FuzzReadPacket): a panic there is a malformed packet like any other.
func decode(pk *packets.Packet, body []byte) (err error) {
	defer func() {
		if recover() != nil {
			err = packets.ErrMalformedPacket
		}
	}()
	switch pk.FixedHeader.Type {
	case packets.Connect:
		err = pk.ConnectDecode(body)
	case packets.Publish:
		err = pk.PublishDecode(body)
	case packets.Puback:
		err = pk.PubackDecode(body)
	case packets.Subscribe:
		err = pk.SubscribeDecode(body)
	case packets.Unsubscribe:
		err = pk.UnsubscribeDecode(body)
	case packets.Disconnect:
		err = pk.DisconnectDecode(body)
	case packets.Pingreq:
		err = pk.PingreqDecode(body)
	case packets.Pubrec, packets.Pubrel, packets.Pubcomp:
		// QoS 2 flows: the edge grants QoS 1 at most, and refuses them.
	default:
		// CONNACK, SUBACK and the like go to clients only; AUTH is not
		// supported.
		err = packets.ErrProtocolViolation
	}
	return err
}

// appendPacket encodes pk, a packet the edge sends, onto buf.
func appendPacket(buf *bytes.Buffer, pk *packets.Packet) error {
	switch pk.FixedHeader.Type {
	case packets.Connack:
		return pk.ConnackEncode(buf)
	case packets.Publish:
		return pk.PublishEncode(buf)
	case packets.Puback:
		return pk.PubackEncode(buf)
	case packets.Suback:
		return pk.SubackEncode(buf)
	case packets.Unsuback:
		return pk.UnsubackEncode(buf)
	case packets.Pingresp:
		return pk.PingrespEncode(buf)
	case packets.Disconnect:
		return pk.DisconnectEncode(buf)
	}
	return fmt.Errorf("mqtt: the edge does not send packets of type %d", pk.FixedHeader.Type)
}

// encode returns pk's bytes.
func encode(pk packets.Packet) []byte {
	var buf bytes.Buffer
	if err := appendPacket(&buf, &pk); err != nil {
		panic(err) // the edge's own packets always encode
	}
	return buf.Bytes()
}
