package server

import (
	"context"
	"errors"
	"net/http"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"udp_iaasd/api"
	"udp_iaasd/etcd"
)

// apiError is an error with its API.md code, ready to be written.
type apiError struct {
	code  string // its HTTP status follows (api.HTTPStatus)
	msg   string
	extra map[string]any
}

func (e *apiError) Error() string { return e.msg }

func badRequest(msg string) *apiError {
	return &apiError{code: api.CodeInvalidArgument, msg: msg}
}

// writeAPIError writes err: an *apiError as it is, anything else through
// classify.
func (s *Server) writeAPIError(w http.ResponseWriter, r *http.Request, err error) {
	var ae *apiError
	if !errors.As(err, &ae) {
		if ae = s.classify(r, err); ae == nil {
			return // the client went away; there is no one to answer
		}
	}
	if ae.code == api.CodeUnavailable {
		w.Header().Set("Retry-After", "1")
	}
	writeError(w, ae.code, ae.msg, ae.extra)
}

// classify maps an error from etcd to API.md's codes. Timeouts are 504 and
// never retried here: a write that timed out may have been applied.
func (s *Server) classify(r *http.Request, err error) *apiError {
	switch {
	case r.Context().Err() != nil:
		return nil
	case errors.Is(err, etcd.ErrNoEndpoints):
		return &apiError{api.CodeUnavailable, "no valid endpoint set is applied yet; see /v1/status", nil}
	case errors.Is(err, etcd.ErrUnavailable):
		return &apiError{api.CodeUnavailable, "etcd is unreachable: no member answers; see /v1/status", nil}
	case errors.Is(err, etcd.ErrClosed):
		return &apiError{api.CodeUnavailable, "the agent is shutting down", nil}
	case errors.Is(err, rpctypes.ErrPermissionDenied):
		// etcd's own access control (etcd.username's roles), refused before
		// anything was applied.
		return &apiError{api.CodeForbidden, "etcd denied the agent's etcd user (etcd.username) access to this key", nil}
	case errors.Is(err, rpctypes.ErrCompacted):
		return &apiError{api.CodeGone, "the requested revision has been compacted", nil}
	case errors.Is(err, rpctypes.ErrFutureRev):
		return badRequest("the requested revision is newer than the store's current revision")
	case errors.Is(err, rpctypes.ErrRequestTooLarge):
		return &apiError{api.CodeTooLarge, "etcd refused the request as too large", nil}
	case errors.Is(err, rpctypes.ErrTimeout), errors.Is(err, rpctypes.ErrTimeoutDueToLeaderFail),
		errors.Is(err, rpctypes.ErrTimeoutDueToConnectionLost), errors.Is(err, rpctypes.ErrTimeoutWaitAppliedIndex):
		return &apiError{api.CodeTimeout, "etcd did not complete the request in time; a write may or may not have been applied", nil}
	case errors.Is(err, context.DeadlineExceeded), status.Code(err) == codes.DeadlineExceeded:
		return &apiError{api.CodeTimeout, "etcd did not answer within etcd.request_timeout; a write may or may not have been applied", nil}
	case errors.Is(err, rpctypes.ErrNoLeader), errors.Is(err, rpctypes.ErrNoSpace),
		errors.Is(err, rpctypes.ErrTooManyRequests):
		// etcd refused before proposing: nothing was applied.
		return &apiError{api.CodeUnavailable, "etcd is unavailable: " + err.Error(), nil}
	case status.Code(err) == codes.Unavailable, errors.Is(err, rpctypes.ErrStopped):
		// The connection broke under the request. A read can be retried; a
		// write may have been applied, and 503 tells clients "safe to retry".
		if r.Method == http.MethodGet || r.Method == http.MethodHead {
			return &apiError{api.CodeUnavailable, "etcd is unavailable: " + err.Error(), nil}
		}
		return &apiError{api.CodeTimeout, "the connection to etcd broke during the request; the write may or may not have been applied: " + err.Error(), nil}
	}
	s.log.Error("request failed", "method", r.Method, "path", rawPath(r), "error", err)
	return &apiError{api.CodeInternal, "internal error: " + err.Error(), nil}
}
