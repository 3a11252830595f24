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

// An error answer and an ERROR line carry the fields of their code, and
// decode back into Error.
func TestErrorJSON(t *testing.T) {
	for _, tc := range []struct {
		e        Error
		lineType string
		want     string
	}{
		{Error{Error: "no such key", Code: CodeNotFound}, "", `{"code":"not_found","error":"no such key"}`},
		{Error{Error: "x", Code: CodePreconditionFailed}, "", `{"code":"precondition_failed","error":"x","current_mod_revision":0}`},
		{Error{Error: "x", Code: CodePreconditionFailed, CurrentModRevision: 9}, "", `{"code":"precondition_failed","error":"x","current_mod_revision":9}`},
		{Error{Error: "old", Code: CodeGone, CompactRevision: 60}, LineError, `{"type":"ERROR","code":"gone","error":"old","compact_revision":60}`},
		{Error{Error: "old", Code: CodeGone}, "", `{"code":"gone","error":"old"}`},
		{Error{Error: "held", Code: CodeLocked, Key: "l/1", Revision: 4}, "", `{"code":"locked","error":"held","key":"l/1","revision":4}`},
		{Error{Error: "held", Code: CodeLocked}, "", `{"code":"locked","error":"held"}`},
		{Error{Error: "lease lost"}, LineLost, `{"type":"LOST","error":"lease lost"}`},
		{Error{Error: "quote \" and \xff", Code: CodeInternal}, "", `{"code":"internal","error":"quote \" and \ufffd"}`},
	} {
		got := string(tc.e.AppendJSON(nil, tc.lineType))
		if got != tc.want {
			t.Errorf("AppendJSON(%+v, %q) = %s, want %s", tc.e, tc.lineType, got, tc.want)
		}
		var back Error
		if err := json.Unmarshal([]byte(got), &back); err != nil || back.Code != tc.e.Code || back.CompactRevision != tc.e.CompactRevision ||
			back.CurrentModRevision != tc.e.CurrentModRevision || back.Key != tc.e.Key {
			t.Errorf("%s decodes to %+v (%v)", got, back, err)
		}
	}
}
