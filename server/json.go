package server

import (
	"strconv"

	"go.etcd.io/etcd/api/v3/mvccpb"

	"udp_iaasd/api"
)

// The JSON of keys, values and events is written by hand: it is on every
// request's path, and API.md's rule — a valid UTF-8 byte string is a JSON
// string, anything else is base64 under a _base64 name — is simpler to keep
// exactly in code than in struct tags.

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
	b = api.AppendBytesField(b, "key", kv.Key)
	if withValue {
		b = append(b, ',')
		b = api.AppendBytesField(b, "value", kv.Value)
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
		b = append(b, `{"type":"`+api.LineDelete+`",`...)
		b = api.AppendBytesField(b, "key", ev.Kv.Key)
		b = append(b, ',')
		b = appendIntField(b, "mod_revision", ev.Kv.ModRevision)
		return append(b, "}\n"...)
	}
	b = append(b, `{"type":"`+api.LinePut+`",`...)
	b = appendKVFields(b, ev.Kv, true)
	return append(b, "}\n"...)
}
