package api

import (
	"encoding/base64"
	"encoding/json"
	"strconv"
	"unicode/utf8"
)

// Stream line types (API.md): the "type" of each NDJSON line of a watch,
// a held lock or leadership, and an election observation.
const (
	// LinePut and LineDelete are watch events.
	LinePut    = "PUT"
	LineDelete = "DELETE"
	// LineProgress is a heartbeat: on a watch, every event up to its
	// revision has been delivered.
	LineProgress = "PROGRESS"
	// LineError is the last line before the server ends a stream; it
	// carries an Error.
	LineError = "ERROR"
	// LineLocked and LineElected are a hold's first line (lock, campaign).
	LineLocked  = "LOCKED"
	LineElected = "ELECTED"
	// LineLost ends a hold whose lease could not be kept alive.
	LineLost = "LOST"
	// LineLeader is an observed election's leader.
	LineLeader = "LEADER"
)

// AppendJSON appends e as the JSON object API.md gives it: error and code
// (code left out when empty), and the fields its code carries —
// current_mod_revision with precondition_failed (0: the key is absent),
// compact_revision with gone when known, key and revision with locked when
// the holder is known. A non-empty lineType makes it a stream line
// ({"type":lineType,…}).
func (e Error) AppendJSON(b []byte, lineType string) []byte {
	b = append(b, '{')
	if lineType != "" {
		b = append(b, `"type":`...)
		b = appendText(b, lineType)
		b = append(b, ',')
	}
	if e.Code != "" {
		b = append(b, `"code":`...)
		b = appendText(b, e.Code)
		b = append(b, ',')
	}
	b = append(b, `"error":`...)
	b = appendText(b, e.Error)
	switch {
	case e.Code == CodePreconditionFailed:
		b = appendInt(b, "current_mod_revision", e.CurrentModRevision)
	case e.Code == CodeGone && e.CompactRevision != 0:
		b = appendInt(b, "compact_revision", e.CompactRevision)
	case e.Code == CodeLocked && e.Key != "":
		b = append(b, `,"key":`...)
		b = appendText(b, e.Key)
		b = appendInt(b, "revision", e.Revision)
		if e.Holder != "" {
			b = append(b, `,"holder":`...)
			b = appendText(b, e.Holder)
		}
	}
	return append(b, '}')
}

// MarshalJSON is AppendJSON as an answer's body.
func (e Error) MarshalJSON() ([]byte, error) { return e.AppendJSON(nil, ""), nil }

// appendText appends s as a JSON string; invalid UTF-8 (a message quoting
// a key of any bytes) is replaced as encoding/json does.
func appendText(b []byte, s string) []byte {
	if utf8.ValidString(s) {
		return AppendString(b, []byte(s))
	}
	q, _ := json.Marshal(s) // a string always marshals
	return append(b, q...)
}

func appendInt(b []byte, name string, v int64) []byte {
	b = append(b, `,"`...)
	b = append(b, name...)
	b = append(b, `":`...)
	return strconv.AppendInt(b, v, 10)
}

const hexDigits = "0123456789abcdef"

// jsonSafe marks the ASCII bytes that need no escaping in a JSON string.
var jsonSafe = func() (t [128]bool) {
	for c := 0x20; c < 0x80; c++ {
		t[c] = c != '"' && c != '\\'
	}
	return t
}()

// AppendString appends s, valid UTF-8, as a JSON string. Unlike
// encoding/json it does not escape <, > and &: nothing here is HTML. Runs of
// safe bytes are copied whole; since s is valid UTF-8, the only multi-byte
// sequences that need escaping are U+2028 and U+2029 (E2 80 A8/A9), valid
// JSON but not valid JavaScript.
func AppendString(b []byte, s []byte) []byte {
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

// AppendBytesField appends `"name":"…"` or `"name_base64":"…"`: API.md's rule
// for keys and values of any bytes — a valid UTF-8 string as it is, else
// base64 under the _base64 name.
func AppendBytesField(b []byte, name string, v []byte) []byte {
	b = append(b, '"')
	b = append(b, name...)
	if utf8.Valid(v) {
		b = append(b, `":`...)
		return AppendString(b, v)
	}
	b = append(b, `_base64":"`...)
	b = base64.StdEncoding.AppendEncode(b, v)
	return append(b, '"')
}
