// Package grpcapi is the gRPC transport of the API service:
// eventbus.v1.EventService, the standard health service and reflection.
package grpcapi

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/reflection"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	eventbusv1 "github.com/eventbus-suite/eventbus/proto/gen/eventbus/v1"

	"github.com/eventbus-suite/eventbus/pkg/apikey"
	"github.com/eventbus-suite/eventbus/pkg/bus"
	"github.com/eventbus-suite/eventbus/pkg/channel"
	"github.com/eventbus-suite/eventbus/pkg/envelope"
	"github.com/eventbus-suite/eventbus/services/api/internal/inflight"
	"github.com/eventbus-suite/eventbus/services/api/internal/ingest"
)

const (
	// streamBatch is how many events of a stream go to Redis together.
	streamBatch = 256
	// maxStreamErrors caps the errors listed in a PublishStreamResponse;
	// the counts stay exact.
	maxStreamErrors = 1000
)

// Server implements eventbus.v1.EventService.
type Server struct {
	eventbusv1.UnimplementedEventServiceServer
	ingest  *ingest.Service
	idem    *ingest.Idempotency
	history bus.History
	budget  *inflight.Budget
	log     *slog.Logger
}

// New returns a gRPC server with EventService, health and reflection
// registered, reading history from history. With keys set, every call but
// health checks needs "authorization: Bearer <key>" metadata. The events
// a call publishes are held against budget, shared with the HTTP API,
// while the call keeps them: a Publish that does not fit fails with
// Unavailable, and so does a PublishStream whose next event does not fit
// even once the events it holds have been published.
func New(svc *ingest.Service, idem *ingest.Idempotency, history bus.History, keys apikey.Keys, budget *inflight.Budget, log *slog.Logger) *grpc.Server {
	s := &Server{ingest: svc, idem: idem, history: history, budget: budget, log: log}
	gs := grpc.NewServer(
		grpc.ChainUnaryInterceptor(func(ctx context.Context, req any, info *grpc.UnaryServerInfo, next grpc.UnaryHandler) (any, error) {
			if err := authorize(ctx, keys, info.FullMethod); err != nil {
				return nil, err
			}
			return next(ctx, req)
		}),
		grpc.ChainStreamInterceptor(func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, next grpc.StreamHandler) error {
			if err := authorize(ss.Context(), keys, info.FullMethod); err != nil {
				return err
			}
			return next(srv, ss)
		}),
	)
	eventbusv1.RegisterEventServiceServer(gs, s)
	healthpb.RegisterHealthServer(gs, health.NewServer()) // SERVING by default
	reflection.Register(gs)
	return gs
}

func authorize(ctx context.Context, keys apikey.Keys, method string) error {
	if keys.Open() || strings.HasPrefix(method, "/grpc.health.v1.Health/") {
		return nil
	}
	md, _ := metadata.FromIncomingContext(ctx)
	for _, v := range md.Get("authorization") {
		if keys.Allow(v) {
			return nil
		}
	}
	return status.Error(codes.Unauthenticated, "missing or unknown API key: send metadata authorization: Bearer <key>")
}

// toStatus maps an error to a gRPC status once for the service: caller
// errors are echoed, everything else is logged and reported without
// internals.
func (s *Server) toStatus(ctx context.Context, err error) error {
	switch {
	case errors.Is(err, envelope.ErrInvalid):
		return status.Error(codes.InvalidArgument, err.Error())
	case errors.Is(err, ingest.ErrKeyReused):
		return status.Error(codes.FailedPrecondition, err.Error())
	case errors.Is(err, ingest.ErrInProgress):
		return status.Error(codes.Aborted, err.Error())
	case errors.Is(err, ingest.ErrOutcomeUnknown):
		// gRPC's code for "may have completed", which clients do not
		// retry on their own as they may Unavailable.
		s.log.ErrorContext(ctx, "publish failed", "error", err)
		return status.Error(codes.DeadlineExceeded, "the event bus (Redis) did not answer in time; the event may have been published")
	case errors.Is(err, ingest.ErrUnavailable):
		s.log.ErrorContext(ctx, "publish failed", "error", err)
		return status.Error(codes.Unavailable, "the event bus (Redis) is unavailable; nothing was published, retry later")
	case errors.Is(err, ingest.ErrCallerGone):
		return status.Error(codes.Canceled, "the call ended before anything was published")
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return status.FromContextError(err).Err()
	}
	s.log.ErrorContext(ctx, "call failed", "error", err)
	return status.Error(codes.Internal, "internal error")
}

// overBudgetMessage says why a call was refused for want of room in the
// in-flight budget.
const overBudgetMessage = "the api is holding as many request bytes as it may (API_MAX_INFLIGHT_BYTES)"

var overBudget = status.Error(codes.Unavailable, overBudgetMessage+"; nothing was published, retry later")

// Publish implements EventService.
func (s *Server) Publish(ctx context.Context, req *eventbusv1.PublishRequest) (*eventbusv1.PublishResponse, error) {
	env := req.GetEvent()
	if env == nil {
		return nil, status.Error(codes.InvalidArgument, "event: required")
	}
	// The message is in memory already (gRPC takes up to 4 MiB); what the
	// budget bounds is how many such messages are kept while Redis works.
	hold := s.budget.Hold()
	defer hold.Release()
	if err := hold.Take(int64(proto.Size(req))); err != nil {
		return nil, overBudget
	}
	publish := func() (*eventbusv1.PublishResponse, error) {
		res, err := s.ingest.Publish(ctx, env, ingest.Packed)
		if err != nil {
			return nil, err
		}
		return &eventbusv1.PublishResponse{Id: res.ID, Channel: res.Channel, Receivers: res.Receivers, Offset: res.Offset, Epoch: res.Epoch}, nil
	}
	if req.GetIdempotencyKey() == "" {
		resp, err := publish()
		if err != nil {
			return nil, s.toStatus(ctx, err)
		}
		return resp, nil
	}
	if err := ingest.ValidKey(req.GetIdempotencyKey()); err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	request, err := proto.MarshalOptions{Deterministic: true}.Marshal(env)
	if err != nil {
		return nil, s.toStatus(ctx, err)
	}
	reply, _, err := s.idem.Do(ctx, "grpc:"+req.GetIdempotencyKey(), request, func() ([]byte, error) {
		resp, err := publish()
		if err != nil {
			return nil, err
		}
		return proto.Marshal(resp)
	})
	if err != nil {
		return nil, s.toStatus(ctx, err)
	}
	resp := new(eventbusv1.PublishResponse)
	if err := proto.Unmarshal(reply, resp); err != nil {
		return nil, s.toStatus(ctx, err)
	}
	return resp, nil
}

// PublishStream implements EventService: events are validated one by one
// and published in order, in batches, and the reply sums up the stream.
func (s *Server) PublishStream(stream grpc.ClientStreamingServer[eventbusv1.PublishStreamRequest, eventbusv1.PublishStreamResponse]) error {
	ctx := stream.Context()
	resp := new(eventbusv1.PublishStreamResponse)
	var (
		batch   = make([]*envelope.Envelope, 0, streamBatch)
		indexes = make([]int64, 0, streamBatch)
		index   int64
	)
	reject := func(i int64, err error) {
		resp.Rejected++
		if len(resp.Errors) >= maxStreamErrors {
			return
		}
		st, _ := status.FromError(s.toStatus(ctx, err))
		resp.Errors = append(resp.Errors, &eventbusv1.EventError{
			Index: i, Code: snakeCase(st.Code().String()), Message: st.Message(),
		})
	}
	// The batch's events are held against the budget until published.
	hold := s.budget.Hold()
	defer hold.Release()
	flush := func() {
		if len(batch) > 0 {
			_, errs := s.ingest.PublishMany(ctx, batch, ingest.Packed)
			for j, err := range errs {
				if err != nil {
					reject(indexes[j], err)
				} else {
					resp.Accepted++
				}
			}
		}
		clear(batch) // let the events go
		batch, indexes = batch[:0], indexes[:0]
		hold.Release()
	}
	for ; ; index++ {
		req, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return err
		}
		if req.GetEvent() == nil {
			reject(index, fmt.Errorf("%w: event: required", envelope.ErrInvalid))
			continue
		}
		size := int64(proto.Size(req))
		if hold.Take(size) != nil {
			// Make room by sending on what this stream holds, then try
			// once more.
			flush()
			if hold.Take(size) != nil {
				return status.Errorf(codes.Unavailable, "%s: events from index %d on were not taken (%d accepted, %d rejected before it); retry them later",
					overBudgetMessage, index, resp.Accepted, resp.Rejected)
			}
		}
		batch = append(batch, req.GetEvent())
		indexes = append(indexes, index)
		if len(batch) == streamBatch {
			flush()
		}
	}
	flush()
	return stream.SendAndClose(resp)
}

// History implements eventbusv1.EventServiceServer.
func (s *Server) History(ctx context.Context, req *eventbusv1.HistoryRequest) (*eventbusv1.HistoryResponse, error) {
	if err := channel.ValidatePattern(req.GetPattern()); err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "pattern: %v", err)
	}
	limit := int(req.GetLimit())
	switch {
	case limit == 0:
		limit = ingest.DefaultHistoryLimit
	case limit < 1 || limit > ingest.MaxHistoryLimit:
		return nil, status.Errorf(codes.InvalidArgument, "limit: %d is not from 1 to %d", limit, ingest.MaxHistoryLimit)
	}
	since, err := bus.Since(req.GetPattern(), req.GetSince(), req.GetEpoch())
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	page, err := s.history.History(ctx, req.GetPattern(), since, limit)
	switch {
	case errors.Is(err, bus.ErrTruncated):
		return nil, status.Errorf(codes.OutOfRange, "history_truncated: %v: the history asked for is gone; reload the state and read on from a fresh position", err)
	case err != nil:
		s.log.ErrorContext(ctx, "read history", "error", err)
		return nil, status.Error(codes.Unavailable, "the event bus (Redis) is unavailable; retry later")
	}
	resp := &eventbusv1.HistoryResponse{Next: page.Next.String(), More: page.More}
	for _, e := range page.Events {
		env, err := envelope.Unmarshal(e.Payload)
		if err != nil {
			s.log.WarnContext(ctx, "recorded event is no envelope; left out of the history", "channel", e.Channel, "offset", e.Position.Offset, "error", err)
			continue
		}
		resp.Events = append(resp.Events, &eventbusv1.HistoryEvent{Offset: e.Position.Offset, Epoch: e.Position.Epoch, Channel: e.Channel, Event: env})
	}
	return resp, nil
}

// snakeCase spells a gRPC code as the HTTP API spells its error codes:
// InvalidArgument → invalid_argument.
func snakeCase(code string) string {
	var b strings.Builder
	for i, r := range code {
		if 'A' <= r && r <= 'Z' {
			if i > 0 {
				b.WriteByte('_')
			}
			r += 'a' - 'A'
		}
		b.WriteRune(r)
	}
	return b.String()
}
