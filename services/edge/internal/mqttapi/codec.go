package mqttapi

import (
	"bufio"
	"bytes"

	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/eventbus-suite/eventbus/pkg/mqttwire"
)

// readPacket reads the next packet a client sends (mqttwire.Read): one of
// the types only a server sends (CONNACK, SUBACK, …), or AUTH, which the
// edge does not support, is a protocol violation.
func readPacket(r *bufio.Reader, version byte, maxBytes int) (packets.Packet, error) {
	pk, err := mqttwire.Read(r, version, maxBytes)
	if err != nil {
		return pk, err
	}
	switch pk.FixedHeader.Type {
	case packets.Connack, packets.Suback, packets.Unsuback, packets.Pingresp, packets.Auth:
		return pk, packets.ErrProtocolViolation
	}
	return pk, nil
}

// encode returns the bytes of pk, a packet of the edge's own.
func encode(pk packets.Packet) []byte {
	var buf bytes.Buffer
	if err := mqttwire.Append(&buf, &pk); err != nil {
		panic(err) // the edge's own packets always encode
	}
	return buf.Bytes()
}
