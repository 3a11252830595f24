package server

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"testing"
	"unicode/utf8"

	"go.etcd.io/etcd/api/v3/mvccpb"
)

// Every key and value, whatever its bytes, comes back from the JSON exactly:
// as a string when it is valid UTF-8, as base64 otherwise.
func FuzzKVJSONRoundTrip(f *testing.F) {
	for _, s := range []string{"", "plain", "\x00", "\xff\xfe", "quote\"back\\slash", "\u2028\u2029", "ключ", "<&>", "\x7f\x1f"} {
		f.Add([]byte(s), []byte(s))
	}
	f.Fuzz(func(t *testing.T, key, value []byte) {
		for _, line := range [][]byte{
			appendKV(nil, &mvccpb.KeyValue{Key: key, Value: value, ModRevision: 7}, true),
			bytes.TrimSuffix(appendEvent(nil, &mvccpb.Event{Kv: &mvccpb.KeyValue{Key: key, Value: value, ModRevision: 7}}), []byte("\n")),
		} {
			var m map[string]any
			if err := json.Unmarshal(line, &m); err != nil {
				t.Fatalf("invalid JSON %q: %v", line, err)
			}
			check := func(name string, want []byte) {
				s, plain := m[name].(string)
				b64, enc := m[name+"_base64"].(string)
				if plain == enc {
					t.Fatalf("%s: want exactly one of %s and %s_base64 in %s", name, name, name, line)
				}
				got := []byte(s)
				if enc {
					if utf8.Valid(want) {
						t.Fatalf("%s is valid UTF-8 but was base64-encoded", name)
					}
					var err error
					if got, err = base64.StdEncoding.DecodeString(b64); err != nil {
						t.Fatal(err)
					}
				}
				if !bytes.Equal(got, want) {
					t.Fatalf("%s %q came back as %q", name, want, got)
				}
			}
			check("key", key)
			check("value", value)
		}
	})
}
