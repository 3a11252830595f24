package etcd

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	"udp_iaasd/endpoint"
)

// The endpoint set: the list the client was given, which of it the live
// client uses — without the members ejected for not answering (health.go
// decides who), and, while new addresses wait to join (ConnectSpread),
// only those already in use — and every change to it. The fields live in
// EtcdClient under c.mu (client.go); this file is their one writer.

// Endpoints returns a copy of the applied endpoint list, normalized.
func (c *EtcdClient) Endpoints() []string {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return append([]string(nil), c.endpoints...)
}

// MinClusterSize returns the fewest endpoints UpdateEndpoints and
// RemoveEndpoint accept (Config.MinClusterSize).
func (c *EtcdClient) MinClusterSize() int { return c.minSize }

// UpdateEndpoints replaces the endpoint list. The whole list is validated
// first (forms, duplicates after normalization, no TLS/plain mix, at least
// MinClusterSize entries); a rejected list changes nothing. A valid list is
// applied to the live client in place, so requests in flight on members that
// stay are not disturbed; a switch between plain and TLS builds a new client,
// swaps it in and closes the old one after its in-flight requests end.
func (c *EtcdClient) UpdateEndpoints(endpoints []string) error {
	if c.initErr != nil {
		return c.initErr
	}
	eps, err := endpoint.ParseList(endpoints, c.cfg.TLS != nil, c.minSize)
	if err != nil {
		return fmt.Errorf("etcd: update endpoints: %w", err)
	}
	return c.ApplyEndpoints(eps)
}

// ApplyEndpoints applies a list that package endpoint has already parsed
// and validated (endpoint.ParseList, or config.ParseEndpoints, which also
// enforces the agent's min_cluster_size): the agent's path, so a file
// version is parsed once. It is applied as UpdateEndpoints applies a list.
// An empty list is refused.
func (c *EtcdClient) ApplyEndpoints(eps []endpoint.Endpoint) error {
	if c.initErr != nil {
		return c.initErr
	}
	if len(eps) == 0 {
		return fmt.Errorf("etcd: apply endpoints: an empty list: %w", endpoint.ErrTooFew)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.applyLocked(eps)
}

// RemoveEndpoint removes one endpoint (in any form that normalizes to a
// listed one), following the seed's own practice of checking the cluster's
// health first: it fails with ErrEndpointNotFound for an endpoint not in the
// list, with endpoint.ErrTooFew when fewer than MinClusterSize would remain,
// and with ErrNoHealthyEndpoint when none of the endpoints that would
// remain answers etcd's Status RPC with a leader. They are probed now (within
// ProbeTimeout): a removal is rare, and an earlier round's answer may
// predate the failure that prompts it.
func (c *EtcdClient) RemoveEndpoint(ep string) error {
	if c.initErr != nil {
		return c.initErr
	}
	target, err := endpoint.Parse(ep, c.cfg.TLS != nil)
	if err != nil {
		return fmt.Errorf("etcd: remove endpoint: %w", err)
	}
	rest, err := c.withoutEndpoint(ep, target.String())
	if err != nil {
		return err
	}
	if !c.anyHealthy(rest) {
		return fmt.Errorf("etcd: remove endpoint %q: none of %s answers: %w", ep, strings.Join(rest, ", "), ErrNoHealthyEndpoint)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if now, err := c.withoutEndpointLocked(ep, target.String()); err != nil {
		return err
	} else if !slices.Equal(now, rest) {
		return fmt.Errorf("etcd: remove endpoint %q: %w", ep, errListChanged)
	}
	eps, err := endpoint.ParseList(rest, c.cfg.TLS != nil, c.minSize)
	if err != nil {
		return fmt.Errorf("etcd: remove endpoint: %w", err)
	}
	return c.applyLocked(eps)
}

func (c *EtcdClient) withoutEndpoint(ep, target string) ([]string, error) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.withoutEndpointLocked(ep, target)
}

// withoutEndpointLocked is the list without target, checked against the
// minimum. c.mu held.
func (c *EtcdClient) withoutEndpointLocked(ep, target string) ([]string, error) {
	if c.closed {
		return nil, ErrClosed
	}
	rest := make([]string, 0, len(c.endpoints))
	for _, e := range c.endpoints {
		if e != target {
			rest = append(rest, e)
		}
	}
	if len(rest) == len(c.endpoints) {
		return nil, fmt.Errorf("etcd: remove endpoint %q: %w (have %s)", ep, ErrEndpointNotFound, strings.Join(c.endpoints, ", "))
	}
	if len(rest) < c.minSize {
		return nil, fmt.Errorf("etcd: remove endpoint %q: would leave %d endpoints, fewer than the minimum %d: %w",
			ep, len(rest), c.minSize, endpoint.ErrTooFew)
	}
	return rest, nil
}

// anyHealthy reports whether one of eps answers a probe now.
func (c *EtcdClient) anyHealthy(eps []string) bool {
	conns, err := c.dialProbes(eps)
	if err != nil {
		return false
	}
	ctx, cancel := context.WithTimeout(context.Background(), c.requestTimeout())
	defer cancel()
	for _, m := range probeMembers(ctx, eps, conns, min(c.cfg.ProbeTimeout, c.requestTimeout())).Members {
		if m.Healthy {
			return true
		}
	}
	return false
}

// applyLocked applies a validated list. c.mu must be held for writing.
func (c *EtcdClient) applyLocked(eps []endpoint.Endpoint) error {
	if c.closed {
		return ErrClosed
	}
	urls := endpoint.Strings(eps)
	useTLS := eps[0].TLS()
	if c.gen != nil && c.gen.tls == useTLS {
		prevLive := c.liveEndpointsLocked()
		c.ejected = nil // a new list starts trusted; the next round judges it
		c.endpoints = urls
		c.joining = c.spreadLocked(prevLive, urls)
		c.gen.cli.SetEndpoints(c.liveEndpointsLocked()...)
		if c.joining != nil {
			c.log.Info("etcd endpoints updated; new addresses join after a random delay",
				"endpoints", urls, "in_use", c.joining.live, "join_in", time.Until(c.joining.at).Round(time.Millisecond))
		} else {
			c.log.Info("etcd endpoints updated", "endpoints", urls)
		}
		c.health.kick()
		return nil
	}
	c.ejected, c.joining = nil, nil
	c.rebuildLocked(urls, useTLS)
	return nil
}

// setEjected leaves the silent endpoints out of the live client's list, and
// puts back those that answer again. A round from an older epoch changes
// nothing: its endpoints were replaced.
func (c *EtcdClient) setEjected(epoch uint64, silent map[string]bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed || c.gen == nil || c.health.epoch.Load() != epoch {
		return
	}
	if len(silent) == 0 {
		silent = nil
	}
	if maps.Equal(silent, c.ejected) {
		return
	}
	prev := c.ejected
	c.ejected = silent
	if c.joining != nil && !slices.ContainsFunc(c.joining.live, func(ep string) bool { return !silent[ep] }) {
		// Every address still in use is silent while a waiting one answered
		// (silent never holds every probed endpoint): waiting for the
		// spread would leave requests nowhere to go, so they join now.
		c.joining = nil
		c.log.Info("etcd endpoints in use are silent; the new ones join now", "endpoints", c.endpoints)
	}
	live := c.liveEndpointsLocked()
	c.gen.cli.SetEndpoints(live...)
	for ep := range silent {
		if !prev[ep] {
			// Requests already on its connections would wait for their
			// deadlines: a removed address is drained, not cut.
			c.conns.closeEndpoint(ep)
		}
	}
	if silent == nil {
		c.log.Info("etcd members answer again; all endpoints in use", "endpoints", live)
	} else {
		c.log.Warn("etcd members not answering; requests go to the others until they do",
			"ejected", slices.Sorted(maps.Keys(silent)), "in_use", live)
	}
}

// liveEndpointsLocked is the list the live client is given: the endpoints
// (or, while new ones wait to join, those in use until they do) without
// the ejected members — never none: clientv3 cannot take an empty list (its
// Dial reads the first endpoint, v3.7.3 client.go dial), and every member
// silent is a cluster to keep asking, not one to stop using. c.mu held.
func (c *EtcdClient) liveEndpointsLocked() []string {
	eps := c.endpoints
	if c.joining != nil {
		eps = c.joining.live
	}
	live := make([]string, 0, len(eps))
	for _, ep := range eps {
		if !c.ejected[ep] {
			live = append(live, ep)
		}
	}
	if len(live) == 0 {
		return slices.Clone(eps)
	}
	return live
}

// joining is an endpoint change whose new addresses wait to join.
type joining struct {
	live []string  // in use until at
	at   time.Time // when the whole list goes live
}

// spreadLocked decides whether a change from the live list prev to next
// waits: only with ConnectSpread set, while connected, and when next adds an
// address. c.mu held.
func (c *EtcdClient) spreadLocked(prev, next []string) *joining {
	if c.cfg.ConnectSpread <= 0 || c.health == nil || !c.health.snapshot().Connected {
		return nil
	}
	var keep []string
	adds := false
	for _, ep := range next {
		if slices.Contains(prev, ep) {
			keep = append(keep, ep)
		} else {
			adds = true
		}
	}
	if !adds {
		return nil
	}
	if len(keep) == 0 {
		keep = prev // nothing stays: the old connections serve until the new ones join
	}
	d := time.Duration(c.rand() * float64(c.cfg.ConnectSpread))
	return &joining{live: keep, at: time.Now().Add(d)}
}

// joinAt is when waiting endpoints join, or the zero time.
func (c *EtcdClient) joinAt() time.Time {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if c.joining == nil {
		return time.Time{}
	}
	return c.joining.at
}

// join puts every endpoint in use once its time has come, or at once when
// early (every connection in use has failed: waiting out the spread would
// leave requests nowhere to go).
func (c *EtcdClient) join(early bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.joining == nil || c.closed || c.gen == nil || !early && time.Now().Before(c.joining.at) {
		return
	}
	c.joining = nil
	live := c.liveEndpointsLocked()
	c.gen.cli.SetEndpoints(live...)
	c.log.Info("etcd endpoints in use", "endpoints", live)
}

func (c *EtcdClient) hasEjected() bool {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return len(c.ejected) > 0
}
