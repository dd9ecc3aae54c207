package httpapi

import (
	"errors"
	"fmt"
	"io"
	"net/http"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/eventbus-suite/eventbus/pkg/envelope"
	"github.com/eventbus-suite/eventbus/services/api/internal/ingest"
)

// domainRoute describes one of the demo domain endpoints: its body is the
// data message of an event type, decoded strictly.
type domainRoute struct {
	typ string
	// id is the field that identifies the entity: generated when the body
	// leaves it empty, returned in the reply and used as the subject.
	id protoreflect.Name
	// fromPath, when set, is the path wildcard that fills id.
	fromPath string
	// defaults fill string fields the body leaves empty.
	defaults map[protoreflect.Name]string
}

var (
	users     = domainRoute{typ: "user.created", id: "user_id"}
	orders    = domainRoute{typ: "order.placed", id: "order_id", defaults: map[protoreflect.Name]string{"currency": "USD"}}
	shipments = domainRoute{typ: "order.shipped", id: "order_id", fromPath: "id"}
	payments  = domainRoute{typ: "payment.completed", id: "payment_id"}
)

func (h *handler) domain(rt domainRoute) func(http.ResponseWriter, *http.Request) error {
	t, ok := envelope.Lookup(rt.typ)
	if !ok {
		panic("httpapi: unregistered domain type " + rt.typ) // a programming error, caught by any test
	}
	return func(w http.ResponseWriter, r *http.Request) error {
		body, err := io.ReadAll(r.Body)
		if err != nil {
			return err
		}
		msg := t.New()
		if err := protojson.Unmarshal(body, msg); err != nil {
			return badRequest("invalid_argument", errors.New(envelope.ErrorText(err)))
		}
		m := msg.ProtoReflect()
		fields := m.Descriptor().Fields()
		idField := fields.ByName(rt.id)
		id := m.Get(idField).String()
		if rt.fromPath != "" {
			p := r.PathValue(rt.fromPath)
			if id != "" && id != p {
				return badRequest("invalid_argument", fmt.Errorf("%s: body says %q but the path says %q", rt.id, id, p))
			}
			id = p
		}
		if id == "" {
			id = envelope.NewID()
		}
		m.Set(idField, protoreflect.ValueOfString(id))
		for name, v := range rt.defaults {
			if f := fields.ByName(name); m.Get(f).String() == "" {
				m.Set(f, protoreflect.ValueOfString(v))
			}
		}
		if err := t.Check(msg); err != nil {
			return badRequest("invalid_argument", err)
		}
		data, err := envelope.PackData(msg)
		if err != nil {
			return err
		}
		res, err := h.Ingest.Publish(r.Context(), &envelope.Envelope{Type: rt.typ, Subject: id, Data: data}, ingest.Packed)
		if err != nil {
			return err
		}
		writeJSON(w, http.StatusAccepted, map[string]any{string(rt.id): id, "event_id": res.ID})
		return nil
	}
}
