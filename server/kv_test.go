package server

import (
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
	"udp_iaasd/internal/etcdtest"
	"unicode/utf8"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Keys are bytes: the key is the raw path after /v1/kv/, percent-decoded
// once, never cleaned or redirected.
func TestKeysAreBytes(t *testing.T) {
	e := newEnv(t, nil)
	tests := []struct {
		target string
		key    string
	}{
		{"/v1/kv/kb/plain", "kb/plain"},
		{"/v1/kv//kb//a//b/", "/kb//a//b/"},
		{"/v1/kv/kb/..", "kb/.."},
		{"/v1/kv/kb/a/../b", "kb/a/../b"},
		{"/v1/kv/kb/./x", "kb/./x"},
		{"/v1/kv/kb%2Fslash", "kb/slash"},
		{"/v1/kv/kb%252F", "kb%2F"}, // decoded once, not twice
		{"/v1/kv/kb/with%20space", "kb/with space"},
		{"/v1/kv/kb/nul%00byte", "kb/nul\x00byte"},
		{"/v1/kv/kb/high%FF%FE", "kb/high\xff\xfe"},
		{"/v1/kv/kb/%D0%BA%D0%BB%D1%8E%D1%87", "kb/ключ"},
		{"/v1/kv/kb/plus+sign", "kb/plus+sign"},
	}
	for i, tt := range tests {
		t.Run(tt.target, func(t *testing.T) {
			val := fmt.Sprintf("value-%d", i)
			r := e.do("PUT", tt.target, nil, []byte(val))
			e.expect(r, http.StatusOK, "")
			if got, ok := e.directGet(tt.key); !ok || got != val {
				t.Fatalf("etcd has %q=%q (present %v), want %q", tt.key, got, ok, val)
			}
			r = e.do("GET", tt.target, nil, nil)
			e.expect(r, http.StatusOK, "")
			if string(r.body) != val {
				t.Fatalf("GET %s = %q, want %q", tt.target, r.body, val)
			}
		})
	}
	// The listing names every key exactly, as a string or as base64.
	r := e.do("GET", "/v1/kv/kb?prefix", nil, nil)
	e.expect(r, http.StatusOK, "")
	got := map[string]bool{}
	for _, kv := range r.json(t)["kvs"].([]any) {
		got[string(keyOf(t, kv.(map[string]any)))] = true
	}
	r = e.do("GET", "/v1/kv//kb?prefix", nil, nil)
	for _, kv := range r.json(t)["kvs"].([]any) {
		got[string(keyOf(t, kv.(map[string]any)))] = true
	}
	for _, tt := range tests {
		if !got[tt.key] {
			t.Errorf("listing lacks key %q", tt.key)
		}
	}
}

// keyOf decodes a listing entry's key, checking exactly one of key and
// key_base64 is present and that base64 is used only when needed.
func keyOf(t *testing.T, kv map[string]any) []byte {
	t.Helper()
	s, plain := kv["key"].(string)
	b64, enc := kv["key_base64"].(string)
	if plain == enc {
		t.Fatalf("entry %v: want exactly one of key and key_base64", kv)
	}
	if plain {
		return []byte(s)
	}
	raw, err := base64.StdEncoding.DecodeString(b64)
	if err != nil || utf8.Valid(raw) {
		t.Fatalf("key_base64 %q: %v (valid UTF-8 must be a plain key)", b64, err)
	}
	return raw
}

func TestValuesRoundTripByteForByte(t *testing.T) {
	e := newEnv(t, nil)
	rng := rand.New(rand.NewPCG(1, 2))
	values := [][]byte{
		{},
		[]byte("plain text"),
		[]byte("line\nbreaks\tand \"quotes\" and \\ and <html> & \u2028"),
		{0x00, 0xff, 0xfe, 0x80},
		[]byte("ключ значение 值"),
	}
	big := make([]byte, 256<<10)
	for i := range big {
		big[i] = byte(rng.IntN(256))
	}
	values = append(values, big)
	for i, v := range values {
		key := fmt.Sprintf("vals/%d", i)
		e.expect(e.do("PUT", "/v1/kv/"+key, map[string]string{"Content-Type": "text/plain"}, v), http.StatusOK, "")
		r := e.do("GET", "/v1/kv/"+key, nil, nil)
		if !bytes.Equal(r.body, v) || r.header.Get("Content-Type") != "application/octet-stream" {
			t.Fatalf("value %d: got %d bytes (%s), want %d", i, len(r.body), r.header.Get("Content-Type"), len(v))
		}
		if got, _ := e.directGet(key); got != string(v) {
			t.Fatalf("value %d differs in etcd", i)
		}
	}
	r := e.do("GET", "/v1/kv/vals/?prefix", nil, nil)
	for _, item := range r.json(t)["kvs"].([]any) {
		kv := item.(map[string]any)
		i, _ := strconv.Atoi(strings.TrimPrefix(string(keyOf(t, kv)), "vals/"))
		s, plain := kv["value"].(string)
		b64, enc := kv["value_base64"].(string)
		if plain == enc {
			t.Fatalf("value %d: want exactly one of value and value_base64: %v", i, kv)
		}
		got := []byte(s)
		if enc {
			got, _ = base64.StdEncoding.DecodeString(b64)
			if utf8.Valid(values[i]) {
				t.Fatalf("value %d is valid UTF-8 but was sent as base64", i)
			}
		}
		if !bytes.Equal(got, values[i]) {
			t.Fatalf("value %d does not round-trip through JSON", i)
		}
	}
}

func TestGetHeadersAndAbsentKey(t *testing.T) {
	e := newEnv(t, nil)
	r := e.do("PUT", "/v1/kv/hdr/k", nil, []byte("v1"))
	e.expect(r, http.StatusOK, "")
	rev := int64(r.json(t)["revision"].(float64))
	if r.header.Get("ETag") != fmt.Sprintf("%q", strconv.FormatInt(rev, 10)) {
		t.Fatalf("PUT ETag %q, revision %d", r.header.Get("ETag"), rev)
	}
	r = e.do("PUT", "/v1/kv/hdr/k", nil, []byte("v2"))
	rev2 := int64(r.json(t)["revision"].(float64))
	r = e.do("GET", "/v1/kv/hdr/k", nil, nil)
	e.expect(r, http.StatusOK, "")
	want := map[string]string{
		"X-Etcd-Create-Revision": strconv.FormatInt(rev, 10),
		"X-Etcd-Mod-Revision":    strconv.FormatInt(rev2, 10),
		"X-Etcd-Version":         "2",
		"X-Etcd-Lease":           "0",
		"ETag":                   fmt.Sprintf(`"%d"`, rev2),
	}
	for h, v := range want {
		if got := r.header.Get(h); got != v {
			t.Errorf("%s = %q, want %q", h, got, v)
		}
	}
	if n, _ := strconv.ParseInt(r.header.Get("X-Etcd-Revision"), 10, 64); n < rev2 {
		t.Errorf("X-Etcd-Revision %d < mod revision %d", n, rev2)
	}
	r = e.do("GET", "/v1/kv/hdr/absent", nil, nil)
	e.expect(r, http.StatusNotFound, "not_found")
	if r.header.Get("X-Etcd-Revision") == "" {
		t.Error("404 lacks X-Etcd-Revision")
	}
	// HEAD answers like GET, without a body.
	r = e.do("HEAD", "/v1/kv/hdr/k", nil, nil)
	if r.status != http.StatusOK || len(r.body) != 0 || r.header.Get("ETag") == "" {
		t.Fatalf("HEAD = %d %q %v", r.status, r.body, r.header)
	}
}

// Every single-key read says its length, whether net/http counts it (small
// values) or the handler does; a HEAD says the length its GET would have.
// And query parameters are unescaped as url.ParseQuery would.
func TestValueLengthAndQueryForms(t *testing.T) {
	e := newEnv(t, nil)
	for _, n := range []int{0, 1, 2047, 2048, 2049, 70000} {
		key := fmt.Sprintf("/v1/kv/len/%d", n)
		e.expect(e.do("PUT", key, nil, bytes.Repeat([]byte("x"), n)), http.StatusOK, "")
		for _, method := range []string{"GET", "HEAD"} {
			r := e.do(method, key, nil, nil)
			e.expect(r, http.StatusOK, "")
			if got := r.header.Get("Content-Length"); got != strconv.Itoa(n) {
				t.Errorf("%s of a %d-byte value: Content-Length %q (Transfer-Encoding %q)", method, n, got, r.header.Get("Transfer-Encoding"))
			}
			if method == "GET" && len(r.body) != n {
				t.Errorf("GET of a %d-byte value: %d bytes", n, len(r.body))
			}
		}
	}
	// ?pre%66ix is ?prefix; + in a value is a space (a bad limit, here).
	r := e.do("GET", "/v1/kv/len/?pre%66ix&keys_%6Fnly", nil, nil)
	e.expect(r, http.StatusOK, "")
	if got := r.json(t)["count"]; got != float64(6) {
		t.Fatalf("escaped ?prefix listed %v keys, want 6: %s", got, r.body)
	}
	r = e.do("GET", "/v1/kv/len/?prefix&limit=1+", nil, nil)
	e.expect(r, http.StatusBadRequest, "invalid_argument")
	if msg, _ := r.json(t)["error"].(string); !strings.Contains(msg, `"1 "`) {
		t.Fatalf("+ was not unescaped to a space: %s", r.body)
	}
}

func TestPrefixListing(t *testing.T) {
	e := newEnv(t, nil)
	for _, k := range []string{"ls/c", "ls/a", "ls/b/x", "ls/b", "lsx"} {
		e.expect(e.do("PUT", "/v1/kv/"+k, nil, []byte("v-"+k)), http.StatusOK, "")
	}
	r := e.do("GET", "/v1/kv/ls/?prefix", nil, nil)
	e.expect(r, http.StatusOK, "")
	m := r.json(t)
	var keys []string
	for _, kv := range m["kvs"].([]any) {
		keys = append(keys, kv.(map[string]any)["key"].(string))
		if kv.(map[string]any)["value"] != "v-"+keys[len(keys)-1] {
			t.Fatalf("entry %v has the wrong value", kv)
		}
	}
	if strings.Join(keys, ",") != "ls/a,ls/b,ls/b/x,ls/c" || m["count"] != 4.0 || m["more"] != false {
		t.Fatalf("listing = %v", m)
	}
	for _, q := range []string{"prefix=true", "prefix&limit=2", "prefix=true&limit=2&keys_only"} {
		r = e.do("GET", "/v1/kv/ls/?"+q, nil, nil)
		e.expect(r, http.StatusOK, "")
		m = r.json(t)
		if strings.Contains(q, "limit") {
			if len(m["kvs"].([]any)) != 2 || m["count"] != 4.0 || m["more"] != true {
				t.Fatalf("%s: %v", q, m)
			}
		}
		if strings.Contains(q, "keys_only") {
			for _, kv := range m["kvs"].([]any) {
				if _, has := kv.(map[string]any)["value"]; has {
					t.Fatalf("keys_only entry has a value: %v", kv)
				}
			}
		}
	}
	// The empty prefix lists every key.
	r = e.do("GET", "/v1/kv/?prefix&keys_only", nil, nil)
	e.expect(r, http.StatusOK, "")
	if r.json(t)["count"].(float64) < 5 {
		t.Fatalf("empty prefix listed %v", r.json(t)["count"])
	}
	// prefix=false is a single-key read.
	e.expect(e.do("GET", "/v1/kv/ls/?prefix=false", nil, nil), http.StatusNotFound, "not_found")
}

func TestReadAtRevisionAndCompaction(t *testing.T) {
	e := newEnv(t, newClusterForTest(t))
	r := e.do("PUT", "/v1/kv/rev/k", nil, []byte("old"))
	rev1 := int64(r.json(t)["revision"].(float64))
	r = e.do("PUT", "/v1/kv/rev/k", nil, []byte("new"))
	rev2 := int64(r.json(t)["revision"].(float64))

	r = e.do("GET", fmt.Sprintf("/v1/kv/rev/k?rev=%d", rev1), nil, nil)
	if r.status != 200 || string(r.body) != "old" {
		t.Fatalf("read at %d = %d %q", rev1, r.status, r.body)
	}
	r = e.do("GET", "/v1/kv/rev/k?serializable", nil, nil)
	if r.status != 200 || string(r.body) != "new" {
		t.Fatalf("serializable read = %d %q", r.status, r.body)
	}
	r = e.do("GET", fmt.Sprintf("/v1/kv/rev/?prefix&rev=%d", rev1), nil, nil)
	if kvs := r.json(t)["kvs"].([]any); len(kvs) != 1 || kvs[0].(map[string]any)["value"] != "old" {
		t.Fatalf("listing at %d = %s", rev1, r.body)
	}
	e.expect(e.do("GET", "/v1/kv/rev/k?rev=999999999", nil, nil), http.StatusBadRequest, "invalid_argument")

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := e.direct.Compact(ctx, rev2); err != nil {
		t.Fatal(err)
	}
	r = e.do("GET", fmt.Sprintf("/v1/kv/rev/k?rev=%d", rev1), nil, nil)
	e.expect(r, http.StatusGone, "gone")
	if got := r.json(t)["compact_revision"]; got != float64(rev2) {
		t.Fatalf("compact_revision = %v, want %d", got, rev2)
	}
	r = e.do("GET", fmt.Sprintf("/v1/watch/rev/k?rev=%d", rev1), nil, nil)
	e.expect(r, http.StatusGone, "gone")
	if got := r.json(t)["compact_revision"]; got != float64(rev2) {
		t.Fatalf("watch compact_revision = %v, want %d", got, rev2)
	}
}

func TestTTL(t *testing.T) {
	e := newEnv(t, nil)
	r := e.do("PUT", "/v1/kv/ttl/k?ttl=1", nil, []byte("soon gone"))
	e.expect(r, http.StatusOK, "")
	r = e.do("GET", "/v1/kv/ttl/k", nil, nil)
	if r.status != 200 || r.header.Get("X-Etcd-Lease") == "0" {
		t.Fatalf("TTL key: %d lease %q", r.status, r.header.Get("X-Etcd-Lease"))
	}
	lease, _ := strconv.ParseInt(r.header.Get("X-Etcd-Lease"), 10, 64)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if ttl, err := e.direct.TimeToLive(ctx, clientv3.LeaseID(lease)); err != nil || ttl.GrantedTTL < 1 {
		t.Fatalf("lease %d: %+v, %v", lease, ttl, err)
	}
	etcdtest.Eventually(t, 15*time.Second, "the TTL key to expire", func() bool {
		_, ok := e.directGet("ttl/k")
		return !ok
	})
	e.expect(e.do("GET", "/v1/kv/ttl/k", nil, nil), http.StatusNotFound, "not_found")
	e.expect(e.do("PUT", "/v1/kv/ttl/k?ttl=0", nil, []byte("x")), http.StatusBadRequest, "invalid_argument")
	// A duration is not seconds; the answer says what is.
	if r := e.do("PUT", "/v1/kv/ttl/k?ttl=10s", nil, []byte("x")); r.status != http.StatusBadRequest || !strings.Contains(string(r.body), "whole seconds") {
		t.Fatalf("ttl=10s: %d %s", r.status, r.body)
	}
}

func TestConditionalWrites(t *testing.T) {
	e := newEnv(t, nil)
	none := map[string]string{"If-None-Match": "*"}
	exists := map[string]string{"If-Match": "*"}

	e.expect(e.do("PUT", "/v1/kv/cas/k", exists, []byte("x")), http.StatusPreconditionFailed, "precondition_failed")
	r := e.do("PUT", "/v1/kv/cas/k", none, []byte("created"))
	e.expect(r, http.StatusOK, "")
	rev := int64(r.json(t)["revision"].(float64))

	r = e.do("PUT", "/v1/kv/cas/k", none, []byte("again"))
	e.expect(r, http.StatusPreconditionFailed, "precondition_failed")
	if got := r.json(t)["current_mod_revision"]; got != float64(rev) {
		t.Fatalf("current_mod_revision = %v, want %d", got, rev)
	}
	r = e.do("PUT", "/v1/kv/cas/k", map[string]string{"If-Match": fmt.Sprintf(`"%d"`, rev)}, []byte("swapped"))
	e.expect(r, http.StatusOK, "")
	rev2 := int64(r.json(t)["revision"].(float64))
	r = e.do("PUT", "/v1/kv/cas/k", map[string]string{"If-Match": fmt.Sprintf(`"%d"`, rev)}, []byte("stale"))
	e.expect(r, http.StatusPreconditionFailed, "precondition_failed")
	if got := r.json(t)["current_mod_revision"]; got != float64(rev2) {
		t.Fatalf("current_mod_revision = %v, want %d", got, rev2)
	}
	if v, _ := e.directGet("cas/k"); v != "swapped" {
		t.Fatalf("value %q after a failed CAS", v)
	}
	e.expect(e.do("PUT", "/v1/kv/cas/k", exists, []byte("exists")), http.StatusOK, "")

	// Conditional delete.
	r = e.do("DELETE", "/v1/kv/cas/k", map[string]string{"If-Match": `"1"`}, nil)
	e.expect(r, http.StatusPreconditionFailed, "precondition_failed")
	r = e.do("GET", "/v1/kv/cas/k", nil, nil)
	r = e.do("DELETE", "/v1/kv/cas/k", map[string]string{"If-Match": r.header.Get("ETag")}, nil)
	e.expect(r, http.StatusOK, "")
	if m := r.json(t); m["deleted"] != 1.0 {
		t.Fatalf("delete = %v", m)
	}
	r = e.do("DELETE", "/v1/kv/cas/k", exists, nil)
	e.expect(r, http.StatusPreconditionFailed, "precondition_failed")
	if got := r.json(t)["current_mod_revision"]; got != 0.0 {
		t.Fatalf("current_mod_revision of an absent key = %v, want 0", got)
	}
	// Deleting an absent key is not an error.
	r = e.do("DELETE", "/v1/kv/cas/k", nil, nil)
	e.expect(r, http.StatusOK, "")
	if m := r.json(t); m["deleted"] != 0.0 || m["revision"] == nil {
		t.Fatalf("delete of absent key = %v", m)
	}
}

// Racing compare-and-swaps on one revision: etcd's transaction picks exactly
// one winner.
func TestCASOneWinner(t *testing.T) {
	e := newEnv(t, nil)
	r := e.do("PUT", "/v1/kv/race/k", nil, []byte("start"))
	ifMatch := map[string]string{"If-Match": r.header.Get("ETag")}
	const racers = 16
	var wg sync.WaitGroup
	statuses := make([]int, racers)
	for i := range racers {
		wg.Go(func() {
			statuses[i] = e.do("PUT", "/v1/kv/race/k", ifMatch, []byte(fmt.Sprintf("winner-%d", i))).status
		})
	}
	wg.Wait()
	wins, winner := 0, -1
	for i, s := range statuses {
		switch s {
		case http.StatusOK:
			wins++
			winner = i
		case http.StatusPreconditionFailed:
		default:
			t.Fatalf("racer %d got %d", i, s)
		}
	}
	if wins != 1 {
		t.Fatalf("%d winners, want exactly 1 (%v)", wins, statuses)
	}
	if v, _ := e.directGet("race/k"); v != fmt.Sprintf("winner-%d", winner) {
		t.Fatalf("etcd holds %q, the winner was %d", v, winner)
	}
}

func TestDeletePrefix(t *testing.T) {
	e := newEnv(t, nil)
	for _, k := range []string{"dp/a", "dp/b", "dp/c/d", "dpx"} {
		e.do("PUT", "/v1/kv/"+k, nil, []byte("v"))
	}
	r := e.do("DELETE", "/v1/kv/dp/?prefix", nil, nil)
	e.expect(r, http.StatusOK, "")
	if r.json(t)["deleted"] != 3.0 {
		t.Fatalf("deleted %v, want 3", r.json(t)["deleted"])
	}
	if _, ok := e.directGet("dpx"); !ok {
		t.Fatal("a key outside the prefix was deleted")
	}
}

func TestBadRequests(t *testing.T) {
	e := newEnv(t, nil, func(o *Options) { o.Limits.MaxKeyBytes, o.Limits.MaxValueBytes = 64, 1024 })
	long := strings.Repeat("k", 65)
	tests := []struct {
		name, method, target string
		header               map[string]string
		body                 []byte
		status               int
		code                 string
	}{
		{"unknown path", "GET", "/v2/kv/x", nil, nil, 404, "not_found"},
		{"root", "GET", "/", nil, nil, 404, "not_found"},
		{"POST on kv", "POST", "/v1/kv/x", nil, []byte("v"), 405, "method_not_allowed"},
		{"PUT on watch", "PUT", "/v1/watch/x", nil, []byte("v"), 405, "method_not_allowed"},
		{"DELETE on status", "DELETE", "/v1/status", nil, nil, 405, "method_not_allowed"},
		{"empty key get", "GET", "/v1/kv/", nil, nil, 400, "invalid_argument"},
		{"empty key put", "PUT", "/v1/kv/", nil, []byte("v"), 400, "invalid_argument"},
		{"empty key delete", "DELETE", "/v1/kv/", nil, nil, 400, "invalid_argument"},
		{"unknown parameter", "GET", "/v1/kv/x?bogus=1", nil, nil, 400, "invalid_argument"},
		{"limit without prefix", "GET", "/v1/kv/x?limit=2", nil, nil, 400, "invalid_argument"},
		{"keys_only without prefix", "GET", "/v1/kv/x?keys_only", nil, nil, 400, "invalid_argument"},
		{"bad limit", "GET", "/v1/kv/x?prefix&limit=-1", nil, nil, 400, "invalid_argument"},
		{"bad rev", "GET", "/v1/kv/x?rev=abc", nil, nil, 400, "invalid_argument"},
		{"bad flag", "GET", "/v1/kv/x?prefix=maybe", nil, nil, 400, "invalid_argument"},
		{"repeated parameter", "GET", "/v1/kv/x?prefix&prefix", nil, nil, 400, "invalid_argument"},
		{"ttl on get", "GET", "/v1/kv/x?ttl=5", nil, nil, 400, "invalid_argument"},
		{"rev on put", "PUT", "/v1/kv/x?rev=5", nil, []byte("v"), 400, "invalid_argument"},
		{"prefix on put", "PUT", "/v1/kv/x?prefix", nil, []byte("v"), 400, "invalid_argument"},
		{"If-Match with prefix", "DELETE", "/v1/kv/x?prefix", map[string]string{"If-Match": `"3"`}, nil, 400, "invalid_argument"},
		{"If-None-Match not star", "PUT", "/v1/kv/x", map[string]string{"If-None-Match": `"3"`}, []byte("v"), 400, "invalid_argument"},
		{"If-Match unquoted", "PUT", "/v1/kv/x", map[string]string{"If-Match": `3`}, []byte("v"), 400, "invalid_argument"},
		{"If-Match weak", "PUT", "/v1/kv/x", map[string]string{"If-Match": `W/"3"`}, []byte("v"), 400, "invalid_argument"},
		{"both conditions", "PUT", "/v1/kv/x", map[string]string{"If-Match": "*", "If-None-Match": "*"}, []byte("v"), 400, "invalid_argument"},
		{"key over limit", "PUT", "/v1/kv/" + long, nil, []byte("v"), 400, "invalid_argument"},
		{"value over limit", "PUT", "/v1/kv/x", nil, make([]byte, 1025), 413, "too_large"},
		{"status with query", "GET", "/v1/status?x=1", nil, nil, 400, "invalid_argument"},
		{"bad heartbeat", "GET", "/v1/watch/x?heartbeat=5", nil, nil, 400, "invalid_argument"},
		{"heartbeat too short", "GET", "/v1/watch/x?heartbeat=10ms", nil, nil, 400, "invalid_argument"},
		{"unknown watch parameter", "GET", "/v1/watch/x?limit=1", nil, nil, 400, "invalid_argument"},
		{"bad percent-encoding", "GET", "/v1/kv/%zz", nil, nil, 400, ""},
		{"semicolon in query", "GET", "/v1/kv/x?prefix;limit=2", nil, nil, 400, "invalid_argument"},
		{"bad escape in a value", "GET", "/v1/kv/x?prefix&limit=%zz", nil, nil, 400, "invalid_argument"},
		{"bad escape in a name", "GET", "/v1/kv/x?%zz", nil, nil, 400, "invalid_argument"},
		{"repeated escaped parameter", "GET", "/v1/kv/x?prefix&pre%66ix", nil, nil, 400, "invalid_argument"},
	}
	parent := e.t
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e.t = t // failures belong to the subtest
			defer func() { e.t = parent }()
			r := e.do(tt.method, tt.target, tt.header, tt.body)
			e.expect(r, tt.status, tt.code)
			if tt.status == 405 && r.header.Get("Allow") == "" {
				t.Fatal("405 without an Allow header")
			}
		})
	}
	if _, ok := e.directGet("x"); ok {
		t.Fatal("a rejected request wrote key x")
	}
	// A body whose size is only known while reading (chunked) is cut off too.
	conn := rawConn(t, e.sock)
	fmt.Fprintf(conn, "PUT /v1/kv/chunked HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
	for range 3 {
		fmt.Fprintf(conn, "200\r\n%s\r\n", strings.Repeat("z", 0x200))
	}
	fmt.Fprintf(conn, "0\r\n\r\n")
	r := readResp(t, conn, "PUT")
	e.expect(r, http.StatusRequestEntityTooLarge, "too_large")
	if _, ok := e.directGet("chunked"); ok {
		t.Fatal("an oversized chunked body was written")
	}
}
