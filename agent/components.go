package agent

import (
	"context"
	"log/slog"
)

// components are what Run starts, in order; it stops them in reverse, so a
// part stops before what it depends on. Run's goroutine owns the list.
type components struct {
	log  *slog.Logger
	list []*component
}

// component is one running part: a goroutine with its own stop.
type component struct {
	name string
	stop context.CancelFunc
	done chan struct{} // closed when run has returned; err is set then
	err  error
}

// start runs fn on a goroutine of its own until stop.
func (cs *components) start(name string, fn func(ctx context.Context) error) *component {
	ctx, cancel := context.WithCancel(context.Background())
	c := &component{name: name, stop: cancel, done: make(chan struct{})}
	go func() {
		defer close(c.done)
		c.err = fn(ctx)
	}()
	cs.list = append(cs.list, c)
	return c
}

// replace stops the component named name and starts fn in its place, at
// its position in the order.
func (cs *components) replace(name string, fn func(ctx context.Context) error) {
	for i, c := range cs.list {
		if c.name != name {
			continue
		}
		cs.halt(c)
		n := cs.start(name, fn)
		cs.list = cs.list[:len(cs.list)-1]
		cs.list[i] = n
		return
	}
}

// stopAll stops every component, the last started first.
func (cs *components) stopAll() {
	for i := len(cs.list) - 1; i >= 0; i-- {
		cs.halt(cs.list[i])
	}
	cs.list = nil
}

func (cs *components) halt(c *component) {
	c.stop()
	<-c.done
	if c.err != nil {
		cs.log.Warn("stopping "+c.name, "error", c.err)
	}
}
