package server

import (
	"errors"
	"net/http"
	"strconv"

	"udp_iaasd/access"
	"udp_iaasd/api"
	"udp_iaasd/etcd"
)

// apiError is an error answer, ready to be written: its body's code gives
// its HTTP status (api.HTTPStatus).
type apiError struct {
	body api.Error
	// retryAfter is Retry-After's seconds for too_many_requests (≥ 1).
	retryAfter int64
}

func apiErr(code, msg string) *apiError { return &apiError{body: api.Error{Code: code, Error: msg}} }

func (e *apiError) Error() string { return e.body.Error }

func badRequest(msg string) *apiError { return apiErr(api.CodeInvalidArgument, msg) }

// writeAPIError writes err: an *apiError as it is, anything else through
// classify.
func (s *Server) writeAPIError(w http.ResponseWriter, r *http.Request, err error) {
	var ae *apiError
	if !errors.As(err, &ae) {
		if ae = s.classify(r, err); ae == nil {
			return // the client went away; there is no one to answer
		}
	}
	switch ae.body.Code {
	case api.CodeUnavailable:
		w.Header().Set("Retry-After", "1")
	case api.CodeTooManyRequests:
		w.Header().Set("Retry-After", strconv.FormatInt(max(1, ae.retryAfter), 10))
	}
	writeError(w, ae.body)
}

// throttled is a refusal by a budget (*access.Throttled) as 429
// too_many_requests with its Retry-After; other errors pass as they are.
func throttled(err error) error {
	var t *access.Throttled
	if !errors.As(err, &t) {
		return err
	}
	return &apiError{body: api.Error{Code: api.CodeTooManyRequests, Error: t.Error()},
		retryAfter: access.RetryAfterSeconds(t.RetryAfter)}
}

// classify maps an error from etcd to API.md's codes (etcd.KindOf says what
// it means). Timeouts are 504 and never retried here: a write that timed out
// may have been applied.
func (s *Server) classify(r *http.Request, err error) *apiError {
	if r.Context().Err() != nil {
		return nil // the client went away; there is no one to answer
	}
	switch etcd.KindOf(err) {
	case etcd.KindThrottled:
		// The host budget could not send it before its deadline; the gate
		// counts and logs it under the peer's rule.
		var be *etcd.BudgetError
		errors.As(err, &be)
		peer, _ := peerFrom(r.Context())
		return throttled(s.gate.RefusedByEtcdBudget(peer, be.RetryAfter)).(*apiError)
	case etcd.KindNoEndpoints:
		return apiErr(api.CodeUnavailable, "no valid endpoint set is applied yet; see /v1/status")
	case etcd.KindClosed:
		return apiErr(api.CodeUnavailable, "the agent is shutting down")
	case etcd.KindUnavailable:
		if errors.Is(err, etcd.ErrUnavailable) {
			return apiErr(api.CodeUnavailable, "etcd is unreachable: no member answers; see /v1/status")
		}
		// etcd refused before proposing: nothing was applied.
		return apiErr(api.CodeUnavailable, "etcd is unavailable: "+err.Error())
	case etcd.KindPermissionDenied:
		// etcd's own access control (etcd.username's roles), refused before
		// anything was applied.
		return apiErr(api.CodeForbidden, "etcd denied the agent's etcd user (etcd.username) access to this key")
	case etcd.KindCompacted:
		return apiErr(api.CodeGone, "the requested revision has been compacted")
	case etcd.KindFutureRevision:
		return badRequest("the requested revision is newer than the store's current revision")
	case etcd.KindInvalid:
		return badRequest("etcd refused the request: " + err.Error())
	case etcd.KindTooLarge:
		return apiErr(api.CodeTooLarge, "etcd refused the request as too large")
	case etcd.KindTimeout:
		return apiErr(api.CodeTimeout, "etcd did not answer within etcd.request_timeout; a write may or may not have been applied")
	case etcd.KindConnectionLost:
		// A read can be retried; a write may have been applied, and 503
		// tells clients "safe to retry".
		if r.Method == http.MethodGet || r.Method == http.MethodHead {
			return apiErr(api.CodeUnavailable, "etcd is unavailable: "+err.Error())
		}
		return apiErr(api.CodeTimeout, "the connection to etcd broke during the request; the write may or may not have been applied: "+err.Error())
	}
	s.log.Error("request failed", "method", r.Method, "path", rawPath(r), "error", err)
	return apiErr(api.CodeInternal, "internal error: "+err.Error())
}
