// Package render keeps files rendered from etcd keys through the agent's
// socket, and reloads their services when the files change: `endpointd
// render` (API.md "Rendering files from etcd"). It is a client of the
// socket (package client) and never talks to etcd itself, so its reads pass
// the agent's access rules and budgets, and its watches ride the agent's
// shared ones: N templates over one prefix cost etcd one watch.
//
// Each template runs on a goroutine of its own, so one template's failure
// (a missing key, a bad check) never stops the others. A render reads every
// key at one revision (snapshot), then watches exactly what it read; a
// change renders again after the quiet period; bytes that differ from the
// destination's are installed atomically, checked, and the reload runs once
// per distinct content (install).
package render

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync"
	"text/template"
	"time"

	"github.com/pmezard/go-difflib/difflib"

	"udp_iaasd/api"
	"udp_iaasd/backoff"
	"udp_iaasd/client"
	"udp_iaasd/config"
)

// Options configure a Renderer.
type Options struct {
	Client *client.Client
	Logger *slog.Logger
	// Notify receives systemd notify states (READY=1, STATUS=…); nil: none.
	Notify func(state string)
}

// Renderer keeps a render file's templates rendered.
type Renderer struct {
	opts Options
	log  *slog.Logger
}

// New returns a renderer.
func New(opts Options) *Renderer {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Notify == nil {
		opts.Notify = func(string) {}
	}
	return &Renderer{opts: opts, log: opts.Logger}
}

// Set is a render file with its templates parsed: what a run uses, whole,
// until a SIGHUP replaces it.
type Set struct {
	cfg   *config.Render
	tmpls []*template.Template
}

// Load reads the render file at path and parses every template; any problem
// (the file's, or a template that does not parse) is an error naming
// FILE:LINE:COL where it is known.
func Load(path string) (*Set, error) {
	cfg, err := config.LoadRender(path)
	if err != nil {
		return nil, err
	}
	s := &Set{cfg: cfg}
	var errs []error
	for i, t := range cfg.Templates {
		tm, err := parse(t.Source)
		if err != nil {
			line, col := cfg.Pos(fmt.Sprintf("templates[%d].source", i))
			errs = append(errs, fmt.Errorf("%s:%d:%d: templates[%d].source: %w", cfg.File(), line, col, i, err))
		}
		s.tmpls = append(s.tmpls, tm)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return s, nil
}

// Config is the set's render file.
func (s *Set) Config() *config.Render { return s.cfg }

// Once renders every template once — check and reload included, or, with
// diff set, writing nothing and printing to diff a unified diff per
// destination that would change. It returns how many failed.
func (r *Renderer) Once(ctx context.Context, s *Set, diff io.Writer) int {
	failed := 0
	for i := range s.cfg.Templates {
		t := &s.cfg.Templates[i]
		content, rev, _, err := r.render(ctx, s, i, t.StaleIfError)
		if err == nil && diff != nil {
			err = printDiff(diff, t.Destination, content)
		} else if err == nil {
			var o outcome
			o, err = install(ctx, t, s.cfg.StateDir, rev, content, r.log.Warn)
			r.logOutcome(t, o, rev, err)
		}
		if err != nil {
			failed++
			r.log.Error("render: template failed", "template", t.Source, "destination", t.Destination, "error", err)
		}
	}
	return failed
}

// render executes template i at one revision: fresh reads, or, with stale
// set and etcd away, the agent's copy confirmed at most stale ago.
func (r *Renderer) render(ctx context.Context, s *Set, i int, stale time.Duration) ([]byte, int64, []dep, error) {
	src := s.cfg.Templates[i].Source
	var last error
	for range 5 {
		snap := newSnapshot(ctx, r.opts.Client, 0)
		content, err := execute(s.tmpls[i], snap)
		if err != nil && stale > 0 && unavailable(err) {
			snap = newSnapshot(ctx, r.opts.Client, stale)
			content, err = execute(s.tmpls[i], snap)
		}
		if errors.Is(err, errMixed) || errors.Is(err, client.ErrGone) {
			last = err
			continue // the copy moved, or the revision was compacted: again
		}
		if err != nil {
			var rerr *readError
			if errors.As(err, &rerr) {
				return nil, 0, snap.deps, fmt.Errorf("%s: %w", src, rerr)
			}
			return nil, 0, snap.deps, positioned(src, err)
		}
		return content, snap.rev, snap.deps, nil
	}
	return nil, 0, nil, fmt.Errorf("%s: %w", src, last)
}

// unavailable: the agent or etcd could not answer (the render can wait).
func unavailable(err error) bool {
	return errors.Is(err, client.ErrUnavailable) || errors.Is(err, client.ErrTimeout) ||
		errors.Is(err, client.ErrTooManyRequests)
}

func (r *Renderer) logOutcome(t *config.RenderTemplate, o outcome, rev int64, err error) {
	switch {
	case err != nil && o == written:
		r.log.Error("render: destination written, reload failed", "destination", t.Destination, "revision", rev, "error", err)
	case err != nil:
	case o == written:
		r.log.Info("render: destination written", "destination", t.Destination, "revision", rev)
	case o == older:
		r.log.Warn("render: not written: rendered at an older revision than the destination's", "destination", t.Destination, "revision", rev)
	default:
		r.log.Debug("render: unchanged", "destination", t.Destination, "revision", rev)
	}
}

// printDiff writes a unified diff from destination's content to content,
// nothing when they are the same.
func printDiff(w io.Writer, destination string, content []byte) error {
	cur, err := os.ReadFile(destination)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	if string(cur) == string(content) {
		return nil
	}
	text, err := difflib.GetUnifiedDiffString(difflib.UnifiedDiff{
		A: difflib.SplitLines(string(cur)), B: difflib.SplitLines(string(content)),
		FromFile: destination, ToFile: destination + " (rendered)", Context: 3,
	})
	if err != nil {
		return err
	}
	_, err = io.WriteString(w, text)
	return err
}

// Run keeps s's templates rendered until ctx ends. A value on reload is
// the next set (a SIGHUP that loaded cleanly): the templates are restarted
// on it; content that renders the same is not written again, so nothing
// reloads. READY=1 is sent once every template has had its first render.
func (r *Renderer) Run(ctx context.Context, s *Set, reload <-chan *Set) error {
	var readyOnce sync.Once
	for {
		runCtx, stop := context.WithCancel(ctx)
		st := newStatus(len(s.cfg.Templates), r.opts.Notify)
		var wg sync.WaitGroup
		for i := range s.cfg.Templates {
			wg.Go(func() { r.keep(runCtx, s, i, st) })
		}
		go func() {
			select {
			case <-st.allTried:
				readyOnce.Do(func() { r.opts.Notify("READY=1") })
			case <-runCtx.Done():
			}
		}()
		select {
		case <-ctx.Done():
			stop()
			wg.Wait()
			return nil
		case next := <-reload:
			stop()
			wg.Wait()
			r.log.Info("render: render file reloaded", "file", next.cfg.File(), "templates", len(next.cfg.Templates))
			s = next
		}
	}
}

// keep is one template's loop: render, install, watch what it read, wait
// for a change and the quiet period, again. It returns when ctx ends.
func (r *Renderer) keep(ctx context.Context, s *Set, i int, st *status) {
	t := &s.cfg.Templates[i]
	changed := make(chan struct{}, 1)
	w := &watches{r: r, changed: changed, active: map[dep]context.CancelFunc{}}
	defer w.stopAll()
	retry := backoff.Backoff{Policy: backoff.DefaultPolicy().WithMax(30 * time.Second)}
	first := true
	for {
		stale := time.Duration(0)
		if first {
			stale = t.StaleIfError // only a renderer that starts during an outage
		}
		content, rev, deps, err := r.render(ctx, s, i, stale)
		if ctx.Err() != nil {
			return
		}
		// Watch what this render read, even when it failed: a missing key's
		// arrival renders it.
		w.set(ctx, deps, rev)
		var o outcome
		if err == nil {
			o, err = install(ctx, t, s.cfg.StateDir, rev, content, r.log.Warn)
			r.logOutcome(t, o, rev, err)
		}
		if err != nil && !(o == written) {
			r.log.Error("render: template failed; the destination is as it was", "template", t.Source,
				"destination", t.Destination, "error", err)
		}
		st.set(i, err)
		first = first && err != nil && unavailable(err)
		if err != nil && unavailable(err) {
			// Nothing will say when the agent or etcd is back: try again.
			if retry.Wait(ctx, retry.Next()) != nil {
				return
			}
			continue
		}
		retry.Reset()
		if !r.quiet(ctx, changed, t.WaitMin, t.WaitMax) {
			return
		}
	}
}

// quiet waits for a change, then until nothing changed for min, at most max
// after the first change. false: ctx ended.
func (r *Renderer) quiet(ctx context.Context, changed <-chan struct{}, min, max time.Duration) bool {
	select {
	case <-ctx.Done():
		return false
	case <-changed:
	}
	if min <= 0 {
		return true
	}
	deadline := time.NewTimer(max)
	defer deadline.Stop()
	for {
		settle := time.NewTimer(min)
		select {
		case <-ctx.Done():
			settle.Stop()
			return false
		case <-deadline.C:
			settle.Stop()
			return true
		case <-settle.C:
			return true
		case <-changed:
			settle.Stop()
		}
	}
}

// watches are one template's watches through the agent, one per key or
// prefix its last render read. Only keep's goroutine uses it.
type watches struct {
	r       *Renderer
	changed chan struct{}
	active  map[dep]context.CancelFunc
}

// set watches exactly deps, from after rev: new ones start, those no
// longer read stop, the others go on (an event they deliver that the
// render already saw renders the same bytes, which writes nothing).
func (w *watches) set(ctx context.Context, deps []dep, rev int64) {
	want := map[dep]bool{}
	for _, d := range deps {
		want[d] = true
		if _, ok := w.active[d]; ok {
			continue
		}
		wctx, cancel := context.WithCancel(ctx)
		w.active[d] = cancel
		go w.follow(wctx, d, rev)
	}
	for d, cancel := range w.active {
		if !want[d] {
			cancel()
			delete(w.active, d)
		}
	}
}

func (w *watches) stopAll() {
	for _, cancel := range w.active {
		cancel()
	}
}

// follow signals every event on d after rev, resuming through the agent's
// restarts and etcd's outages (the client resumes a stream; past its
// retries this starts it again from the last event seen).
func (w *watches) follow(ctx context.Context, d dep, rev int64) {
	next := rev + 1
	b := backoff.Backoff{Policy: backoff.DefaultPolicy().WithMax(30 * time.Second)}
	for ctx.Err() == nil {
		opts := []client.Option{client.AtRevision(next)}
		if rev == 0 {
			opts = nil // the render read nothing at a revision (the agent was away)
		}
		if d.prefix {
			opts = append(opts, client.WithPrefix())
		}
		for ev, err := range w.r.opts.Client.Watch(ctx, d.key, opts...) {
			if err != nil {
				if errors.Is(err, client.ErrGone) {
					// Events were compacted away: render again from now.
					rev, next = 0, 0
					w.signal()
				}
				break
			}
			b.Reset()
			if ev.Type == api.LineProgress {
				next = ev.Revision + 1
				continue
			}
			next, rev = ev.Revision+1, ev.Revision
			w.signal()
		}
		if b.Wait(ctx, b.Next()) != nil {
			return
		}
	}
}

func (w *watches) signal() {
	select {
	case w.changed <- struct{}{}:
	default:
	}
}

// status is what STATUS= says: how many templates are current, and the
// last error.
type status struct {
	notify   func(string)
	allTried chan struct{}

	mu      sync.Mutex // guards the fields below
	tried   []bool
	failing []error
	last    error
}

func newStatus(n int, notify func(string)) *status {
	return &status{notify: notify, allTried: make(chan struct{}), tried: make([]bool, n), failing: make([]error, n)}
}

func (s *status) set(i int, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	first := !s.tried[i]
	s.tried[i], s.failing[i] = true, err
	if err != nil {
		s.last = err
	}
	current, all := 0, true
	for j := range s.tried {
		all = all && s.tried[j]
		if s.tried[j] && s.failing[j] == nil {
			current++
		}
	}
	line := fmt.Sprintf("STATUS=%d of %d templates current", current, len(s.tried))
	if s.last != nil {
		line += "; last error: " + strings.ReplaceAll(s.last.Error(), "\n", " ")
	}
	s.notify(line)
	if first && all {
		close(s.allTried)
	}
}
