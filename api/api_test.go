package api

import (
	"encoding/json"
	"strings"
	"testing"
)

// Every code maps to its own HTTP status and back (API.md's table), so the
// client reads a code-less answer as the code the server would have sent.
func TestCodesAndStatuses(t *testing.T) {
	tests := []struct {
		code   string
		status int
	}{
		{CodeInvalidArgument, 400}, {CodeForbidden, 403}, {CodeNotFound, 404}, {CodeMethodNotAllowed, 405},
		{CodeGone, 410}, {CodePreconditionFailed, 412}, {CodeTooLarge, 413}, {CodeUnavailable, 503},
		{CodeTimeout, 504}, {CodeInternal, 500},
	}
	for _, tt := range tests {
		if got := HTTPStatus(tt.code); got != tt.status {
			t.Errorf("HTTPStatus(%q) = %d, want %d", tt.code, got, tt.status)
		}
		if got := CodeForStatus(tt.status); got != tt.code {
			t.Errorf("CodeForStatus(%d) = %q, want %q", tt.status, got, tt.code)
		}
	}
	if got := CodeForStatus(431); got != CodeInvalidArgument {
		t.Errorf("CodeForStatus(431) = %q: net/http's header refusal is a bad request", got)
	}
}

// The status document carries API.md's field names.
func TestStatusFieldNames(t *testing.T) {
	b, err := json.Marshal(Status{Endpoints: []string{}, Etcd: EtcdStatus{Members: []MemberStatus{{}}}})
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{`"version"`, `"ready"`, `"endpoints"`, `"config"`, `"endpoints_file"`, `"sha256"`,
		`"applied_at"`, `"reloads"`, `"last_error"`, `"last_error_at"`, `"etcd"`, `"connected"`, `"cluster_id"`,
		`"leader"`, `"reconnects"`, `"members"`, `"endpoint"`, `"healthy"`, `"latency_ms"`, `"error"`} {
		if !strings.Contains(string(b), f) {
			t.Errorf("status JSON lacks %s: %s", f, b)
		}
	}
}
