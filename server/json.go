package server

import (
	"encoding/base64"
	"strconv"
	"unicode/utf8"

	"go.etcd.io/etcd/api/v3/mvccpb"
)

// The JSON of keys, values and events is written by hand: it is on every
// request's path, and API.md's rule — a valid UTF-8 byte string is a JSON
// string, anything else is base64 under a _base64 name — is simpler to keep
// exactly in code than in struct tags.

// appendBytesField appends `"name":"…"` or `"name_base64":"…"`.
func appendBytesField(b []byte, name string, v []byte) []byte {
	b = append(b, '"')
	b = append(b, name...)
	if utf8.Valid(v) {
		b = append(b, `":`...)
		return appendJSONString(b, v)
	}
	b = append(b, `_base64":"`...)
	b = base64.StdEncoding.AppendEncode(b, v)
	return append(b, '"')
}

func appendIntField(b []byte, name string, v int64) []byte {
	b = append(b, '"')
	b = append(b, name...)
	b = append(b, `":`...)
	return strconv.AppendInt(b, v, 10)
}

// appendKV appends one key-value object of a listing.
func appendKV(b []byte, kv *mvccpb.KeyValue, withValue bool) []byte {
	b = append(b, '{')
	b = appendKVFields(b, kv, withValue)
	return append(b, '}')
}

// appendKVFields appends a key-value's fields, without braces.
func appendKVFields(b []byte, kv *mvccpb.KeyValue, withValue bool) []byte {
	b = appendBytesField(b, "key", kv.Key)
	if withValue {
		b = append(b, ',')
		b = appendBytesField(b, "value", kv.Value)
	}
	b = append(b, ',')
	b = appendIntField(b, "create_revision", kv.CreateRevision)
	b = append(b, ',')
	b = appendIntField(b, "mod_revision", kv.ModRevision)
	b = append(b, ',')
	b = appendIntField(b, "version", kv.Version)
	b = append(b, ',')
	return appendIntField(b, "lease", kv.Lease)
}

// appendEvent appends one watch event line, newline included.
func appendEvent(b []byte, ev *mvccpb.Event) []byte {
	if ev.Type == mvccpb.Event_DELETE {
		b = append(b, `{"type":"DELETE",`...)
		b = appendBytesField(b, "key", ev.Kv.Key)
		b = append(b, ',')
		b = appendIntField(b, "mod_revision", ev.Kv.ModRevision)
		return append(b, "}\n"...)
	}
	b = append(b, `{"type":"PUT",`...)
	b = appendKVFields(b, ev.Kv, true)
	return append(b, "}\n"...)
}

const hexDigits = "0123456789abcdef"

// jsonSafe marks the ASCII bytes that need no escaping in a JSON string.
var jsonSafe = func() (t [128]bool) {
	for c := 0x20; c < 0x80; c++ {
		t[c] = c != '"' && c != '\\'
	}
	return t
}()

// appendJSONString appends s, valid UTF-8, as a JSON string. Unlike
// encoding/json it does not escape <, > and &: nothing here is HTML. Runs of
// safe bytes are copied whole; since s is valid UTF-8, the only multi-byte
// sequences that need escaping are U+2028 and U+2029 (E2 80 A8/A9), valid
// JSON but not valid JavaScript.
func appendJSONString(b []byte, s []byte) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < 0x80 {
			if jsonSafe[c] {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xF])
			}
			i++
			start = i
			continue
		}
		if c == 0xE2 && i+2 < len(s) && s[i+1] == 0x80 && (s[i+2] == 0xA8 || s[i+2] == 0xA9) {
			b = append(b, s[start:i]...)
			b = append(b, `\u202`...)
			b = append(b, hexDigits[s[i+2]&0xF])
			i += 3
			start = i
			continue
		}
		i++
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}
