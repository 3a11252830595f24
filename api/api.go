// Package api is the local socket API's wire vocabulary, declared once for
// the server that speaks it and the Go client that reads it: the error codes
// of API.md with their HTTP statuses, the error body and its encoding, the
// stream line types, the JSON string rule, and the /v1/status document.
//
// It owns names and shapes only; it does no I/O and knows nothing of etcd.
package api

import "net/http"

// Error codes (API.md "Transport"). Every error answer carries one.
const (
	CodeInvalidArgument    = "invalid_argument"
	CodeForbidden          = "forbidden"
	CodeNotFound           = "not_found"
	CodeMethodNotAllowed   = "method_not_allowed"
	CodeGone               = "gone"
	CodePreconditionFailed = "precondition_failed"
	CodeTooLarge           = "too_large"
	CodeUnavailable        = "unavailable"
	CodeTimeout            = "timeout"
	CodeInternal           = "internal"
	// CodeLocked (version 1.1): a lock's wait ran out; the body names the
	// holder's key and revision.
	CodeLocked = "locked"
	// CodeTooManyRequests (version 1.2): over a budget (the peer's rate or
	// max_streams, or the host's budget toward etcd); Retry-After says
	// when to try again. Nothing was sent to etcd.
	CodeTooManyRequests = "too_many_requests"
)

// Codes lists every error code, in the order of their HTTP statuses.
var Codes = []string{CodeInvalidArgument, CodeForbidden, CodeNotFound, CodeMethodNotAllowed, CodeLocked, CodeGone,
	CodePreconditionFailed, CodeTooLarge, CodeTooManyRequests, CodeInternal, CodeUnavailable, CodeTimeout}

// HTTPStatus is the HTTP status API.md gives an error code; an unknown code
// is 500.
func HTTPStatus(code string) int {
	switch code {
	case CodeInvalidArgument:
		return http.StatusBadRequest
	case CodeForbidden:
		return http.StatusForbidden
	case CodeNotFound:
		return http.StatusNotFound
	case CodeMethodNotAllowed:
		return http.StatusMethodNotAllowed
	case CodeGone:
		return http.StatusGone
	case CodePreconditionFailed:
		return http.StatusPreconditionFailed
	case CodeTooLarge:
		return http.StatusRequestEntityTooLarge
	case CodeUnavailable:
		return http.StatusServiceUnavailable
	case CodeTimeout:
		return http.StatusGatewayTimeout
	case CodeLocked:
		return http.StatusConflict
	case CodeTooManyRequests:
		return http.StatusTooManyRequests
	}
	return http.StatusInternalServerError
}

// CodeForStatus is the code for an HTTP status, for answers that carry none
// (net/http's own refusals, a proxy in between).
func CodeForStatus(status int) string {
	switch status {
	case http.StatusBadRequest, http.StatusRequestHeaderFieldsTooLarge:
		return CodeInvalidArgument
	case http.StatusForbidden:
		return CodeForbidden
	case http.StatusNotFound:
		return CodeNotFound
	case http.StatusMethodNotAllowed:
		return CodeMethodNotAllowed
	case http.StatusGone:
		return CodeGone
	case http.StatusPreconditionFailed:
		return CodePreconditionFailed
	case http.StatusRequestEntityTooLarge:
		return CodeTooLarge
	case http.StatusServiceUnavailable:
		return CodeUnavailable
	case http.StatusGatewayTimeout:
		return CodeTimeout
	case http.StatusConflict:
		return CodeLocked
	case http.StatusTooManyRequests:
		return CodeTooManyRequests
	}
	return CodeInternal
}

// Error is the body of an error answer, and of a watch stream's closing
// ERROR line (which also has "type").
type Error struct {
	Error string `json:"error"`
	Code  string `json:"code"`
	// CurrentModRevision comes with precondition_failed (0: the key is absent).
	CurrentModRevision int64 `json:"current_mod_revision"`
	// CompactRevision comes with gone.
	CompactRevision int64 `json:"compact_revision"`
	// Key and Revision come with locked: the holder's key and its create
	// revision.
	Key      string `json:"key,omitempty"`
	Revision int64  `json:"revision,omitempty"`
	// Holder comes with locked when the holder said who it is (a holder
	// through endpointd: its uid, unit, pid and host).
	Holder string `json:"holder,omitempty"`
}

// Status is GET /v1/status (API.md "Agent endpoints"); the fields API.md
// names are a contract, the others are documented in the README.
type Status struct {
	Version   string       `json:"version"`
	Ready     bool         `json:"ready"`
	Endpoints []string     `json:"endpoints"`
	Config    ConfigStatus `json:"config"`
	Etcd      EtcdStatus   `json:"etcd"`
	// Cache lists the cached prefixes (cache.prefixes), sorted; omitted
	// when none are configured.
	Cache []CacheStatus `json:"cache,omitempty"`
}

// CacheStatus is one cached prefix's copy.
type CacheStatus struct {
	Prefix string `json:"prefix"`
	// Present: the agent has a copy (listed, resumed, or loaded from disk);
	// the fields below describe it only then.
	Present  bool  `json:"present"`
	Revision int64 `json:"revision"`
	Keys     int   `json:"keys"`
	// AgeSeconds: since the copy was last confirmed current by its watch.
	AgeSeconds float64 `json:"age_seconds"`
	// Confirmed: its watch has caught up with etcd.
	Confirmed bool `json:"confirmed"`
	// PersistedRevision and PersistedAt (RFC 3339): the last copy written
	// to cache.dir (or loaded from it); 0 and "" when none.
	PersistedRevision int64  `json:"persisted_revision"`
	PersistedAt       string `json:"persisted_at"`
}

// ConfigStatus describes the endpoints file as last applied and read.
type ConfigStatus struct {
	EndpointsFile string `json:"endpoints_file"`
	SHA256        string `json:"sha256"`
	AppliedAt     string `json:"applied_at"`
	Reloads       uint64 `json:"reloads"`
	LastError     string `json:"last_error"`
	LastErrorAt   string `json:"last_error_at"`
}

// EtcdStatus is the connection to etcd.
type EtcdStatus struct {
	Connected  bool   `json:"connected"`
	ClusterID  string `json:"cluster_id"`
	Leader     string `json:"leader"`
	Reconnects uint64 `json:"reconnects"`
	LastError  string `json:"last_error"`
	// CheckedAt is when Members were probed (RFC 3339; "" before the first
	// probe round).
	CheckedAt string         `json:"checked_at"`
	Members   []MemberStatus `json:"members"`
}

// MemberStatus is the latest probe of one endpoint.
type MemberStatus struct {
	Endpoint  string  `json:"endpoint"`
	Healthy   bool    `json:"healthy"`
	LatencyMS float64 `json:"latency_ms"`
	Error     string  `json:"error"`
}

// NotReadyReason says why a status is not ready ("" when it is), for
// /readyz and for people.
func (s Status) NotReadyReason() string {
	switch {
	case len(s.Endpoints) == 0 && s.Config.LastError != "":
		return "no valid endpoint set applied yet: " + s.Config.LastError
	case len(s.Endpoints) == 0:
		return "no valid endpoint set applied yet"
	case !s.Etcd.Connected && s.Etcd.LastError != "":
		return "etcd unreachable: " + s.Etcd.LastError
	case !s.Etcd.Connected:
		return "etcd has not answered yet"
	}
	return ""
}
