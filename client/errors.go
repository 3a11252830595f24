package client

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"time"

	"udp_iaasd/api"
)

// Sentinel errors, one per API.md error code; errors.Is(err, ErrNotFound)
// holds for an *Error with code not_found, and so on.
var (
	ErrInvalidArgument    = errors.New("client: invalid argument")
	ErrForbidden          = errors.New("client: forbidden")
	ErrNotFound           = errors.New("client: not found")
	ErrMethodNotAllowed   = errors.New("client: method not allowed")
	ErrGone               = errors.New("client: revision compacted")
	ErrPreconditionFailed = errors.New("client: precondition failed")
	ErrTooLarge           = errors.New("client: too large")
	// ErrUnavailable: the agent is not reachable, or etcd is not (503).
	ErrUnavailable = errors.New("client: unavailable")
	// ErrTimeout: etcd did not answer in time; a write may have been applied.
	ErrTimeout  = errors.New("client: timeout")
	ErrInternal = errors.New("client: internal error")
	// ErrLocked: a lock's wait ran out (or a try found it held); the
	// *Error's HolderKey and HolderRevision name the holder.
	ErrLocked = errors.New("client: locked")
	// ErrTooManyRequests: over a budget (the caller's rate or stream limit,
	// or the host's budget toward etcd); nothing was sent to etcd. The
	// *Error's RetryAfter says when to try again. The client retries it
	// like ErrUnavailable, within RetryMax.
	ErrTooManyRequests = errors.New("client: too many requests")
)

var codes = map[string]error{
	api.CodeInvalidArgument:    ErrInvalidArgument,
	api.CodeForbidden:          ErrForbidden,
	api.CodeNotFound:           ErrNotFound,
	api.CodeMethodNotAllowed:   ErrMethodNotAllowed,
	api.CodeGone:               ErrGone,
	api.CodePreconditionFailed: ErrPreconditionFailed,
	api.CodeTooLarge:           ErrTooLarge,
	api.CodeUnavailable:        ErrUnavailable,
	api.CodeTimeout:            ErrTimeout,
	api.CodeInternal:           ErrInternal,
	api.CodeLocked:             ErrLocked,
	api.CodeTooManyRequests:    ErrTooManyRequests,
}

// Error is an error answer from the agent.
type Error struct {
	Status  int    // HTTP status
	Code    string // API.md code, e.g. "precondition_failed"
	Message string
	// CurrentModRevision is set for precondition_failed (0: key absent).
	CurrentModRevision int64
	// CompactRevision is set for gone.
	CompactRevision int64
	// HolderKey and HolderRevision are set for locked; Holder too when
	// the holder said who it is (uid, unit, pid and host).
	HolderKey      string
	HolderRevision int64
	Holder         string
	// RetryAfter is the agent's Retry-After (too_many_requests,
	// unavailable); 0 when it sent none.
	RetryAfter time.Duration
	// Revision is the store revision the answer was read at, when it says
	// (X-Etcd-Revision: a not_found read does).
	Revision int64
}

func (e *Error) Error() string {
	return fmt.Sprintf("endpointd: %s (%d %s)", e.Message, e.Status, e.Code)
}

// Is maps the code to its sentinel.
func (e *Error) Is(target error) bool { return codes[e.Code] == target }

func decodeError(resp *http.Response) error {
	var body api.Error
	raw, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if err := json.Unmarshal(raw, &body); err != nil || body.Code == "" {
		// Not our JSON: a proxy, or net/http itself refusing the request.
		body.Error, body.Code = fmt.Sprintf("unexpected answer %q", raw), api.CodeForStatus(resp.StatusCode)
	}
	retry, _ := retryAfter(resp)
	rev, _ := strconv.ParseInt(resp.Header.Get("X-Etcd-Revision"), 10, 64)
	return &Error{Status: resp.StatusCode, Code: body.Code, Message: body.Error,
		CurrentModRevision: body.CurrentModRevision, CompactRevision: body.CompactRevision,
		HolderKey: body.Key, HolderRevision: body.Revision, Holder: body.Holder, RetryAfter: retry, Revision: rev}
}

func base64Decode(s string) ([]byte, error) { return base64.StdEncoding.DecodeString(s) }
