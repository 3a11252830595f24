package server

import (
	"net/http"
	"strconv"
	"time"

	"udp_iaasd/api"
)

// watchWriteTimeout ends a stream whose client stopped reading, so that it
// cannot pin an etcd watch and a goroutine forever.
const watchWriteTimeout = 10 * time.Second

// streamWriter is the one writer of every NDJSON stream — a watch, a held
// lock or leadership, an observation (API.md's line types, api.Line*). It
// starts the 200 answer, flushes each line, and gives a client that
// stopped reading watchWriteTimeout. The stream's handler goroutine owns
// it.
type streamWriter struct {
	w   http.ResponseWriter
	rc  *http.ResponseController
	buf []byte
}

func startStream(w http.ResponseWriter) *streamWriter {
	h := w.Header()
	h.Set("Content-Type", "application/x-ndjson")
	h.Set("Cache-Control", "no-store")
	w.WriteHeader(http.StatusOK)
	sw := &streamWriter{w: w, rc: http.NewResponseController(w)}
	sw.rc.Flush() // the client sees the stream begin before its first line
	return sw
}

// write sends whole lines (each ending in a newline) and flushes them.
func (sw *streamWriter) write(b []byte) bool {
	sw.rc.SetWriteDeadline(time.Now().Add(watchWriteTimeout))
	if _, err := sw.w.Write(b); err != nil {
		return false
	}
	return sw.rc.Flush() == nil
}

// line sends one line, b without its newline.
func (sw *streamWriter) line(b []byte) bool {
	sw.buf = append(append(sw.buf[:0], b...), '\n')
	return sw.write(sw.buf)
}

// progress sends a PROGRESS line: every event up to rev has been delivered
// (rev < 0: a heartbeat that vouches for no revision).
func (sw *streamWriter) progress(rev int64) bool {
	b := append(sw.buf[:0], `{"type":"`+api.LineProgress+`"`...)
	if rev >= 0 {
		b = append(b, `,"revision":`...)
		b = strconv.AppendInt(b, rev, 10)
	}
	sw.buf = append(b, "}\n"...)
	return sw.write(sw.buf)
}

// event sends a line of type typ with an error message and code ("": none)
// — ERROR, which ends a stream, or LOST.
func (sw *streamWriter) event(typ, msg, code string) bool {
	return sw.errorLine(typ, api.Error{Error: msg, Code: code})
}

// errorLine sends e as a line of type typ.
func (sw *streamWriter) errorLine(typ string, e api.Error) bool {
	sw.buf = append(e.AppendJSON(sw.buf[:0], typ), '\n')
	return sw.write(sw.buf)
}
