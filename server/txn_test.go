package server

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"strings"
	"sync"
	"testing"

	"udp_iaasd/access"
)

// txnAnswer is POST /v1/txn's 200 body.
type txnAnswer struct {
	Succeeded bool  `json:"succeeded"`
	Revision  int64 `json:"revision"`
	Results   []struct {
		Revision int64 `json:"revision"`
		Deleted  *int64
		Count    *int64
		More     *bool
		KVs      []map[string]any `json:"kvs"`
	} `json:"results"`
}

func (e *env) txn(body string) (resp, txnAnswer) {
	e.t.Helper()
	r := e.do("POST", "/v1/txn", nil, []byte(body))
	var a txnAnswer
	if r.status == http.StatusOK {
		if err := json.Unmarshal(r.body, &a); err != nil {
			e.t.Fatalf("txn answer %s: %v", r.body, err)
		}
	}
	return r, a
}

func (e *env) modRev(key string) int64 {
	e.t.Helper()
	resp, err := e.direct.Get(e.t.Context(), key)
	if err != nil {
		e.t.Fatal(err)
	}
	if len(resp.Kvs) == 0 {
		return 0
	}
	return resp.Kvs[0].ModRevision
}

// A two-key update applies both or neither, decided by a compare.
func TestTxnTwoKeys(t *testing.T) {
	e := newEnv(t, nil)
	e.do("PUT", "/v1/kv/tx2/a", nil, []byte("1"))
	rev := e.modRev("tx2/a")
	body := fmt.Sprintf(`{"compare":[{"key":"tx2/a","target":"mod_revision","op":"=","value":%d}],
		"success":[{"put":{"key":"tx2/a","value":"2"}},{"put":{"key":"tx2/b","value":"2"}},{"get":{"key":"tx2/","prefix":true}}],
		"failure":[{"get":{"key":"tx2/a"}}]}`, rev)
	r, a := e.txn(body)
	if r.status != http.StatusOK || !a.Succeeded || len(a.Results) != 3 {
		t.Fatalf("first txn: %d %s", r.status, r.body)
	}
	if a.Results[0].Revision != a.Revision || a.Results[2].Count == nil || *a.Results[2].Count != 2 || len(a.Results[2].KVs) != 2 {
		t.Fatalf("results: %s", r.body)
	}
	for _, k := range []string{"tx2/a", "tx2/b"} {
		if v, _ := e.directGet(k); v != "2" {
			t.Fatalf("%s = %q after the txn", k, v)
		}
	}
	// The same compare now fails: the failure branch runs, nothing is written.
	r, a = e.txn(body)
	if r.status != http.StatusOK || a.Succeeded || len(a.Results) != 1 || len(a.Results[0].KVs) != 1 {
		t.Fatalf("second txn: %d %s", r.status, r.body)
	}
	if got := a.Results[0].KVs[0]["value"]; got != "2" {
		t.Fatalf("failure branch read %v", got)
	}
}

// Two conflicting transactions at once: exactly one wins.
func TestTxnRace(t *testing.T) {
	e := newEnv(t, nil)
	for round := range 10 {
		key := fmt.Sprintf("txrace/%d", round)
		body := fmt.Sprintf(`{"compare":[{"key":%q,"target":"create_revision","op":"=","value":0}],
			"success":[{"put":{"key":%q,"value":"mine"}}]}`, key, key)
		var wg sync.WaitGroup
		results := make([]bool, 2)
		for i := range results {
			wg.Go(func() {
				r, a := e.txn(body)
				if r.status != http.StatusOK {
					t.Errorf("txn: %d %s", r.status, r.body)
				}
				results[i] = a.Succeeded
			})
		}
		wg.Wait()
		if results[0] == results[1] {
			t.Fatalf("round %d: succeeded %v", round, results)
		}
	}
}

// Every compare target and operator, every operation with its options,
// base64 keys and values.
func TestTxnTargetsAndOps(t *testing.T) {
	e := newEnv(t, nil)
	e.do("PUT", "/v1/kv/txo/k", nil, []byte("hello"))
	e.do("PUT", "/v1/kv/txo/k", nil, []byte("hello")) // version 2
	for _, k := range []string{"txo/p/1", "txo/p/2", "txo/p/3", "txo/d/1", "txo/d/2"} {
		e.do("PUT", "/v1/kv/"+k, nil, []byte("v"))
	}
	mod, create := e.modRev("txo/k"), int64(0)
	if resp, err := e.direct.Get(t.Context(), "txo/k"); err == nil {
		create = resp.Kvs[0].CreateRevision
	}
	b64 := base64.StdEncoding.EncodeToString
	for _, tc := range []struct {
		cmp  string
		want bool
	}{
		{`{"key":"txo/k","target":"value","op":"=","value":"hello"}`, true},
		{`{"key":"txo/k","target":"value","op":"!=","value":"hello"}`, false},
		{`{"key":"txo/k","target":"value","op":">","value":"hell"}`, true},
		{`{"key":"txo/k","target":"value","op":"<","value_base64":"` + b64([]byte("zzz")) + `"}`, true},
		{`{"key_base64":"` + b64([]byte("txo/k")) + `","target":"version","op":"=","value":2}`, true},
		{`{"key":"txo/k","target":"version","op":">","value":2}`, false},
		{fmt.Sprintf(`{"key":"txo/k","target":"create_revision","op":"=","value":%d}`, create), true},
		{fmt.Sprintf(`{"key":"txo/k","target":"mod_revision","op":"<","value":%d}`, mod+1), true},
		{fmt.Sprintf(`{"key":"txo/k","target":"mod_revision","op":"!=","value":%d}`, mod), false},
		{`{"key":"txo/k","target":"lease","op":"=","value":0}`, true},
		{`{"key":"txo/absent","target":"create_revision","op":"=","value":0}`, true},
	} {
		r, a := e.txn(`{"compare":[` + tc.cmp + `]}`)
		if r.status != http.StatusOK || a.Succeeded != tc.want {
			t.Errorf("compare %s: %d %s, want succeeded=%v", tc.cmp, r.status, r.body, tc.want)
		}
	}

	binKey := "txo/bin/\x00\xff"
	r, a := e.txn(`{"success":[
		{"get":{"key":"txo/p/","prefix":true,"limit":2,"keys_only":true}},
		{"delete":{"key":"txo/d/","prefix":true}},
		{"put":{"key":"txo/ttl","value":"t","ttl":30}},
		{"put":{"key_base64":"` + b64([]byte(binKey)) + `","value_base64":"` + b64([]byte{0, 1, 2}) + `"}},
		{"get":{"key_base64":"` + b64([]byte(binKey)) + `"}}]}`)
	if r.status != http.StatusOK || !a.Succeeded || len(a.Results) != 5 {
		t.Fatalf("ops: %d %s", r.status, r.body)
	}
	get := a.Results[0]
	if *get.Count != 3 || !*get.More || len(get.KVs) != 2 || get.KVs[0]["value"] != nil {
		t.Errorf("limited keys-only get: %s", r.body)
	}
	if *a.Results[1].Deleted != 2 {
		t.Errorf("prefix delete: %s", r.body)
	}
	if resp, err := e.direct.Get(t.Context(), "txo/ttl"); err != nil || len(resp.Kvs) != 1 || resp.Kvs[0].Lease == 0 {
		t.Errorf("the ttl put has no lease: %v %v", resp, err)
	}
	if v, ok := e.directGet(binKey); !ok || v != "\x00\x01\x02" {
		t.Errorf("binary put: %q %v", v, ok)
	}
	if got := a.Results[4].KVs; len(got) != 1 {
		t.Errorf("binary get: %s", r.body)
	}
	// An empty transaction is allowed and does nothing.
	if r, a := e.txn(`{}`); r.status != http.StatusOK || !a.Succeeded {
		t.Errorf("empty txn: %d %s", r.status, r.body)
	}
}

// Malformed transactions are 400 (413 over the size limit), and nothing of
// them is applied.
func TestTxnRefused(t *testing.T) {
	e := newEnv(t, nil, func(o *Options) { o.Limits.MaxTxnBytes = 4096 })
	many := make([]string, 129)
	for i := range many {
		many[i] = fmt.Sprintf(`{"put":{"key":"txr/%d","value":"v"}}`, i)
	}
	for _, tc := range []struct{ body, code, msg string }{
		{`{"success":[`, "invalid_argument", "malformed"},
		{`{"succes":[]}`, "invalid_argument", "unknown field"},
		{`{} {}`, "invalid_argument", "more than one JSON value"},
		{`{"success":[{"put":{"value":"v"}}]}`, "invalid_argument", `missing \"key\"`},
		{`{"success":[{"put":{"key":"a","key_base64":"YQ==","value":"v"}}]}`, "invalid_argument", "not both"},
		{`{"success":[{"put":{"key":"txr/a"}}]}`, "invalid_argument", `missing \"value\"`},
		{`{"success":[{"put":{"key":"txr/a","value":"v","prefix":true}}]}`, "invalid_argument", "put takes"},
		{`{"success":[{"get":{"key":"txr/a","limit":3}}]}`, "invalid_argument", "only with prefix"},
		{`{"success":[{"get":{"key":"txr/a"},"put":{"key":"txr/a","value":"v"}}]}`, "invalid_argument", "exactly one"},
		{`{"success":[{"put":{"key":"txr/a","value":"1"}},{"delete":{"key":"txr/a"}}]}`, "invalid_argument", "already written"},
		{`{"success":[{"put":{"key":"txr/a","value":"1","ttl":0}}]}`, "invalid_argument", "ttl"},
		{`{"success":[{"get":{"key":""}}]}`, "invalid_argument", "empty key"},
		{`{"success":[{"put":{"key_base64":"!!","value":"v"}}]}`, "invalid_argument", "key_base64"},
		{`{"compare":[{"key":"txr/a","target":"size","op":"=","value":1}]}`, "invalid_argument", "target must be"},
		{`{"compare":[{"key":"txr/a","target":"version","op":"==","value":1}]}`, "invalid_argument", "op must be"},
		{`{"compare":[{"key":"txr/a","target":"version","op":"=","value":"one"}]}`, "invalid_argument", "whole number"},
		{`{"compare":[{"key":"txr/a","target":"value","op":"=","value":1}]}`, "invalid_argument", "string"},
		{`{"success":[` + strings.Join(many, ",") + `]}`, "too_large", "max_txn_bytes"},
	} {
		r := e.do("POST", "/v1/txn", nil, []byte(tc.body))
		e.expect(r, map[string]int{"invalid_argument": 400, "too_large": 413}[tc.code], tc.code)
		if !strings.Contains(string(r.body), tc.msg) {
			t.Errorf("%.60s: message %s lacks %q", tc.body, r.body, tc.msg)
		}
	}
	e2 := newEnv(t, nil)
	r := e2.do("POST", "/v1/txn", nil, []byte(`{"success":[`+strings.Join(many, ",")+`]}`))
	e2.expect(r, 400, "invalid_argument")
	if _, ok := e.directGet("txr/a"); ok {
		t.Fatal("a refused transaction wrote")
	}
	e.expect(e.do("GET", "/v1/txn", nil, nil), http.StatusMethodNotAllowed, "method_not_allowed")
}

// Every key of a transaction goes through the access rules: the compares
// and both branches, whichever would run.
func TestTxnAccess(t *testing.T) {
	policy, err := access.NewPolicy([]access.Rule{
		{Name: "rw", UIDs: []uint32{uint32(os.Getuid())}, Prefixes: []string{"txa/mine/"}, Read: true, Write: true},
		{Name: "ro", UIDs: []uint32{uint32(os.Getuid())}, Prefixes: []string{"txa/ro/"}, Read: true},
	})
	if err != nil {
		t.Fatal(err)
	}
	e := newEnv(t, nil, withPolicy(policy))
	ok := `{"compare":[{"key":"txa/ro/x","target":"version","op":"=","value":0}],"success":[{"put":{"key":"txa/mine/a","value":"v"}}],"failure":[{"get":{"key":"txa/ro/","prefix":true}}]}`
	if r, a := e.txn(ok); r.status != http.StatusOK || !a.Succeeded {
		t.Fatalf("allowed txn: %d %s", r.status, r.body)
	}
	for _, body := range []string{
		`{"compare":[{"key":"txa/other","target":"version","op":"=","value":0}]}`,
		`{"success":[{"put":{"key":"txa/ro/x","value":"v"}}]}`,
		`{"success":[{"put":{"key":"txa/mine/b","value":"v"}}],"failure":[{"delete":{"key":"txa/other"}}]}`,
		`{"success":[{"get":{"key":"txa/","prefix":true}}]}`,
		`{"success":[{"delete":{"key":"txa/mine","prefix":true}}]}`,
	} {
		r := e.do("POST", "/v1/txn", nil, []byte(body))
		e.expect(r, http.StatusForbidden, "forbidden")
	}
	if _, ok := e.directGet("txa/mine/b"); ok {
		t.Fatal("a refused transaction wrote")
	}
}
