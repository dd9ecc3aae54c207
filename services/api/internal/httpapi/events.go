package httpapi

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strconv"
	"strings"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/eventbus-suite/eventbus/pkg/envelope"
	"github.com/eventbus-suite/eventbus/services/api/internal/ingest"
)

// MaxBatch is the most events one POST /v1/events:batch takes.
const MaxBatch = 1000

const (
	cloudEventsJSON  = "application/cloudevents+json"
	cloudEventsBatch = "application/cloudevents-batch+json"
)

// simpleEvent is the plain JSON form of an event.
type simpleEvent struct {
	ID         string            `json:"id"`
	Type       string            `json:"type"`
	Source     string            `json:"source"`
	Subject    string            `json:"subject"`
	Channel    string            `json:"channel"`
	Time       *time.Time        `json:"time"`
	Attributes map[string]string `json:"attributes"`
	Data       json.RawMessage   `json:"data"`
}

func (h *handler) publishEvent(w http.ResponseWriter, r *http.Request) error {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		return err
	}
	var env *envelope.Envelope
	if mediaType(r) == cloudEventsJSON {
		env, err = decodeCloudEvent(body)
	} else {
		env, err = decodeSimple(body)
	}
	if err != nil {
		return err
	}
	res, err := h.Ingest.Publish(r.Context(), env, ingest.Decoded)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusAccepted, res)
	return nil
}

// batchItem is one result of a batch: the reply POST /v1/events gives
// (id, channel, offset, epoch, receivers), or an error.
type batchItem struct {
	*ingest.Result
	Error *errorBody `json:"error,omitempty"`
}

type errorBody struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// publishBatch takes a JSON array or NDJSON of up to MaxBatch events. Each
// gets its own result, in order; valid events are published even when
// others are not.
func (h *handler) publishBatch(w http.ResponseWriter, r *http.Request) error {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		return err
	}
	raws, err := splitBatch(body)
	if err != nil {
		return err
	}
	decode := decodeSimple
	if mediaType(r) == cloudEventsBatch {
		decode = decodeCloudEvent
	}
	items := make([]batchItem, len(raws))
	envs := make([]*envelope.Envelope, 0, len(raws))
	index := make([]int, 0, len(raws))
	for i, raw := range raws {
		env, err := decode(raw)
		if err != nil {
			ae, _ := toAPIError(err)
			items[i].Error = &errorBody{Code: ae.code, Message: ae.message}
			continue
		}
		envs = append(envs, env)
		index = append(index, i)
	}
	results, errs := h.Ingest.PublishMany(r.Context(), envs, ingest.Decoded)
	accepted := 0
	for j, i := range index {
		if errs[j] != nil {
			ae, internal := toAPIError(errs[j])
			if internal {
				h.Logger.ErrorContext(r.Context(), "batch event failed", "index", i, "error", errs[j])
			}
			items[i].Error = &errorBody{Code: ae.code, Message: ae.message}
			continue
		}
		items[i].Result = &results[j]
		accepted++
	}
	writeJSON(w, http.StatusOK, map[string]any{
		"results":  items,
		"accepted": accepted,
		"rejected": len(items) - accepted,
	})
	return nil
}

// splitBatch splits a JSON array or NDJSON into events.
func splitBatch(body []byte) ([]json.RawMessage, error) {
	body = bytes.TrimSpace(body)
	var raws []json.RawMessage
	if len(body) > 0 && body[0] == '[' {
		if err := json.Unmarshal(body, &raws); err != nil {
			return nil, badRequest("invalid_json", fmt.Errorf("batch: %w", err))
		}
	} else {
		for n, line := range bytes.Split(body, []byte("\n")) {
			if line = bytes.TrimSpace(line); len(line) == 0 {
				continue
			}
			if !json.Valid(line) {
				return nil, badRequest("invalid_json", fmt.Errorf("batch: line %d is not valid JSON", n+1))
			}
			raws = append(raws, line)
		}
	}
	switch {
	case len(raws) == 0:
		return nil, badRequest("invalid_argument", errors.New("batch: no events; send a JSON array or one JSON event per line"))
	case len(raws) > MaxBatch:
		return nil, badRequest("too_many_events", fmt.Errorf("batch: %d events, at most %d", len(raws), MaxBatch))
	}
	return raws, nil
}

func mediaType(r *http.Request) string {
	mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	return mt
}

// decodeStrict decodes exactly one JSON value into v, refusing unknown
// fields, and says what was wrong in terms of the JSON the caller sent.
func decodeStrict(body []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var se *json.SyntaxError
		var te *json.UnmarshalTypeError
		switch {
		case errors.As(err, &se):
			return badRequest("invalid_json", fmt.Errorf("malformed JSON at byte %d: %w", se.Offset, err))
		case errors.As(err, &te):
			return badRequest("invalid_argument", fmt.Errorf("%s: want a JSON %s, got %s", te.Field, te.Type, te.Value))
		case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
			return badRequest("invalid_json", errors.New("body is empty or truncated JSON"))
		case strings.HasPrefix(err.Error(), "json: unknown field"):
			return badRequest("invalid_argument", fmt.Errorf("%s", strings.TrimPrefix(err.Error(), "json: ")))
		}
		return badRequest("invalid_json", err)
	}
	if dec.More() {
		return badRequest("invalid_json", errors.New("more than one JSON value in body"))
	}
	return nil
}

func decodeSimple(body []byte) (*envelope.Envelope, error) {
	var ev simpleEvent
	if err := decodeStrict(body, &ev); err != nil {
		var ae *apiError
		if errors.As(err, &ae) && strings.Contains(ae.message, `"specversion"`) {
			ae.message += "; send CloudEvents with Content-Type: " + cloudEventsJSON
		}
		return nil, err
	}
	if ev.Type == "" {
		return nil, badRequest("invalid_argument", errors.New("type: required, e.g. \"order.placed\""))
	}
	data, err := envelope.DecodeData(ev.Type, ev.Data)
	if err != nil {
		return nil, err
	}
	env := &envelope.Envelope{
		Id: ev.ID, Type: ev.Type, Source: ev.Source, Subject: ev.Subject, Channel: ev.Channel,
		Attributes: ev.Attributes, Data: data,
	}
	if ev.Time != nil {
		env.Time = timestamppb.New(*ev.Time)
	}
	return env, nil
}

// decodeCloudEvent reads a CloudEvents 1.0 event in structured JSON mode.
// Attributes beyond the core ones are extensions and land in attributes.
func decodeCloudEvent(body []byte) (*envelope.Envelope, error) {
	var m map[string]json.RawMessage
	if err := decodeStrict(body, &m); err != nil {
		return nil, err
	}
	env := &envelope.Envelope{Attributes: map[string]string{}}
	var errs []error
	str := func(k string, required bool) string {
		raw, ok := m[k]
		delete(m, k)
		if !ok {
			if required {
				errs = append(errs, fmt.Errorf("%s: required", k))
			}
			return ""
		}
		var s string
		if err := json.Unmarshal(raw, &s); err != nil || (required && s == "") {
			errs = append(errs, fmt.Errorf("%s: want a non-empty string", k))
		}
		return s
	}
	if v := str("specversion", true); v != "" && v != "1.0" {
		errs = append(errs, fmt.Errorf("specversion: %q is not supported, want \"1.0\"", v))
	}
	env.Id, env.Source, env.Type = str("id", true), str("source", true), str("type", true)
	env.Subject = str("subject", false)
	if t := str("time", false); t != "" {
		ts, err := time.Parse(time.RFC3339Nano, t)
		if err != nil {
			errs = append(errs, fmt.Errorf("time: want RFC 3339, got %q", t))
		}
		env.Time = timestamppb.New(ts)
	}
	if ct := str("datacontenttype", false); ct != "" && ct != "application/json" && !strings.HasSuffix(ct, "+json") {
		errs = append(errs, fmt.Errorf("datacontenttype: %q is not supported, want application/json", ct))
	}
	if _, ok := m["data_base64"]; ok {
		errs = append(errs, errors.New("data_base64: binary data is not supported, send JSON in data"))
		delete(m, "data_base64")
	}
	data := m["data"]
	delete(m, "data")
	for k, raw := range m {
		v, err := extensionValue(raw)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", k, err))
			continue
		}
		env.Attributes[k] = v
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("%w: %w", envelope.ErrInvalid, errors.Join(errs...))
	}
	d, err := envelope.DecodeData(env.Type, data)
	if err != nil {
		return nil, err
	}
	env.Data = d
	return env, nil
}

// extensionValue renders a CloudEvents extension attribute as a string:
// strings as they are, numbers and booleans in their JSON form.
func extensionValue(raw json.RawMessage) (string, error) {
	var v any
	if err := json.Unmarshal(raw, &v); err != nil {
		return "", err
	}
	switch v := v.(type) {
	case string:
		return v, nil
	case bool:
		return strconv.FormatBool(v), nil
	case float64:
		return string(raw), nil
	}
	return "", errors.New("extension attribute must be a string, number or boolean")
}
