package render

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"regexp"
	"slices"
	"strings"
	"text/template"
	"time"

	"udp_iaasd/client"
)

// MaxOutput is the most one template may render: a template that loops
// away must not fill the destination's disk (the error names it).
const MaxOutput = 16 << 20

// Entry is one key of an ls listing, as templates see it.
type Entry struct {
	Key         string // the whole key
	Value       string
	ModRevision int64
}

// funcNames are the template functions (API.md "Rendering files"); parsing
// needs them before any snapshot exists, so they are declared once with
// stand-ins and rebound per render.
var funcNames = []string{"key", "keyOr", "ls", "exists", "json", "toJSON", "base64Decode", "trimPrefix", "split",
	"join", "env", "hostname"}

// parse reads and parses a template file. A syntax error or an unknown
// function is reported as SOURCE:LINE:COL (the column when text/template
// gives one).
func parse(source string) (*template.Template, error) {
	text, err := os.ReadFile(source)
	if err != nil {
		return nil, err
	}
	fm := template.FuncMap{}
	for _, n := range funcNames {
		fm[n] = func(...any) (any, error) { return nil, errors.New("not rendering") }
	}
	for n, f := range pureFuncs {
		fm[n] = f
	}
	t, err := template.New(source).Option("missingkey=error").Funcs(fm).Parse(string(text))
	if err != nil {
		return nil, positioned(source, err)
	}
	return t, nil
}

// tmplPos matches text/template's "template: NAME:LINE:COL: " and
// "template: NAME:LINE: " prefixes.
var tmplPos = regexp.MustCompile(`^template: (.*?):(\d+)(?::(\d+))?: (.*)$`)

// positioned rewrites a text/template error as SOURCE:LINE[:COL]: message.
func positioned(source string, err error) error {
	msg := err.Error()
	if m := tmplPos.FindStringSubmatch(msg); m != nil && m[1] == source {
		if m[3] != "" {
			return fmt.Errorf("%s:%s:%s: %s", source, m[2], m[3], m[4])
		}
		return fmt.Errorf("%s:%s: %s", source, m[2], m[4])
	}
	// Execution errors name the template as "template: NAME:LINE:COL: executing …".
	if rest, ok := strings.CutPrefix(msg, "template: "+source+":"); ok {
		return fmt.Errorf("%s:%s", source, rest)
	}
	return fmt.Errorf("%s: %w", source, err)
}

// pureFuncs are the functions that read nothing from etcd. Those that
// transform a string take it last, for pipelines.
var pureFuncs = template.FuncMap{
	"json": func(text string) (any, error) {
		var v any
		if err := json.Unmarshal([]byte(text), &v); err != nil {
			return nil, fmt.Errorf("json: %w", err)
		}
		return v, nil
	},
	"toJSON": func(v any) (string, error) {
		b, err := json.Marshal(v)
		return string(b), err
	},
	"base64Decode": func(s string) (string, error) {
		b, err := base64.StdEncoding.DecodeString(s)
		if err != nil {
			return "", fmt.Errorf("base64Decode: %w", err)
		}
		return string(b), nil
	},
	"trimPrefix": func(prefix, s string) string { return strings.TrimPrefix(s, prefix) },
	"split":      func(sep, s string) []string { return strings.Split(s, sep) },
	"join": func(sep string, list any) (string, error) {
		switch l := list.(type) {
		case []string:
			return strings.Join(l, sep), nil
		case []any:
			parts := make([]string, len(l))
			for i, v := range l {
				parts[i] = fmt.Sprint(v)
			}
			return strings.Join(parts, sep), nil
		}
		return "", fmt.Errorf("join: want a list, got %T", list)
	},
	"env": os.Getenv,
	"hostname": func() (string, error) {
		return os.Hostname()
	},
}

// dep is one thing a render read: a key, or every key under a prefix.
type dep struct {
	key    string
	prefix bool
}

// snapshot answers one render's reads, all at one revision: the first read
// fixes the revision, the others are read at it. With stale set (a render
// at start while etcd is away), reads may come from the agent's copy; they
// then carry no revision to ask for, so each answer's revision is checked
// instead, and a render that read at two is refused (errMixed) and done
// again.
type snapshot struct {
	ctx   context.Context
	c     *client.Client
	stale time.Duration

	rev   int64
	keys  map[string]*client.KV // nil value: absent
	lists map[string][]Entry
	deps  []dep
	seen  map[dep]bool
}

var errMixed = errors.New("the agent's copy moved during the render; rendering again")

func newSnapshot(ctx context.Context, c *client.Client, stale time.Duration) *snapshot {
	return &snapshot{ctx: ctx, c: c, stale: stale, keys: map[string]*client.KV{}, lists: map[string][]Entry{},
		seen: map[dep]bool{}}
}

func (s *snapshot) depend(d dep) {
	if !s.seen[d] {
		s.seen[d] = true
		s.deps = append(s.deps, d)
	}
}

func (s *snapshot) opts() []client.Option {
	if s.stale > 0 {
		return []client.Option{client.StaleIfError(s.stale)}
	}
	if s.rev > 0 {
		return []client.Option{client.AtRevision(s.rev)}
	}
	return nil
}

// at records the revision of an answer. The first fixes the render's
// revision. A read at that revision (?rev=) is at it by construction — etcd
// reports its current revision in such an answer's header, not the one
// read — so only stale reads, which cannot name a revision, are compared.
func (s *snapshot) at(rev int64) error {
	switch {
	case s.rev == 0:
		s.rev = rev
	case s.stale > 0 && rev != s.rev:
		return errMixed
	}
	return nil
}

func (s *snapshot) get(key string) (*client.KV, error) {
	s.depend(dep{key: key})
	if kv, ok := s.keys[key]; ok {
		return kv, nil
	}
	kv, err := s.c.Get(s.ctx, key, s.opts()...)
	var ae *client.Error
	switch {
	case err == nil:
		if err := s.at(kv.Revision); err != nil {
			return nil, err
		}
	case errors.Is(err, client.ErrNotFound) && errors.As(err, &ae):
		if err := s.at(ae.Revision); err != nil {
			return nil, err
		}
		kv = nil
	default:
		return nil, &readError{key: key, err: err}
	}
	s.keys[key] = kv
	return kv, nil
}

func (s *snapshot) list(prefix string) ([]Entry, error) {
	s.depend(dep{key: prefix, prefix: true})
	if l, ok := s.lists[prefix]; ok {
		return l, nil
	}
	res, err := s.c.List(s.ctx, prefix, s.opts()...)
	if err != nil {
		return nil, &readError{key: prefix, err: err}
	}
	if err := s.at(res.Revision); err != nil {
		return nil, err
	}
	out := make([]Entry, len(res.KVs))
	for i, kv := range res.KVs {
		out[i] = Entry{Key: string(kv.Key), Value: string(kv.Value), ModRevision: kv.ModRevision}
	}
	slices.SortFunc(out, func(a, b Entry) int { return strings.Compare(a.Key, b.Key) })
	s.lists[prefix] = out
	return out, nil
}

// readError is a read the agent or etcd could not answer.
type readError struct {
	key string
	err error
}

func (e *readError) Error() string { return fmt.Sprintf("reading %q: %v", e.key, e.err) }
func (e *readError) Unwrap() error { return e.err }

// missingError is a key the template needs that does not exist.
type missingError struct{ key string }

func (e *missingError) Error() string {
	return fmt.Sprintf("key %q does not exist (keyOr gives a default; exists tests for it)", e.key)
}

// funcs binds the reading functions to s.
func (s *snapshot) funcs() template.FuncMap {
	return template.FuncMap{
		"key": func(k string) (string, error) {
			kv, err := s.get(k)
			if err != nil {
				return "", err
			}
			if kv == nil {
				return "", &missingError{key: k}
			}
			return string(kv.Value), nil
		},
		"keyOr": func(k, def string) (string, error) {
			kv, err := s.get(k)
			if err != nil || kv == nil {
				return def, err
			}
			return string(kv.Value), nil
		},
		"exists": func(k string) (bool, error) {
			kv, err := s.get(k)
			return kv != nil, err
		},
		"ls": s.list,
	}
}

// execute renders t over s, at most MaxOutput bytes.
func execute(t *template.Template, s *snapshot) ([]byte, error) {
	run, err := t.Clone()
	if err != nil {
		return nil, err
	}
	run.Funcs(s.funcs())
	w := &limitedBuffer{max: MaxOutput}
	if err := run.Execute(w, nil); err != nil {
		// The reading functions' own errors keep their type (a missing
		// key, etcd away) under text/template's wrapping.
		return nil, err
	}
	return w.Bytes(), nil
}

type limitedBuffer struct {
	bytes.Buffer
	max int
}

var errTooLarge = fmt.Errorf("the output passed %d MiB (MaxOutput): a runaway loop?", MaxOutput>>20)

func (b *limitedBuffer) Write(p []byte) (int, error) {
	if b.Len()+len(p) > b.max {
		return 0, errTooLarge
	}
	return b.Buffer.Write(p)
}
