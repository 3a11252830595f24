package etcd

import (
	"errors"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"

	"udp_iaasd/internal/etcdtest"
)

func TestAuth(t *testing.T) {
	cluster := etcdtest.New(t, 1)
	cluster.EnableAuth(t, "agent", "agentpw", "a/")
	c := newTestClient(t, Config{Endpoints: cluster.Endpoints(), Username: "agent", Password: "agentpw"})
	ctx := ctxT(t, 20*time.Second)

	if err := c.Put(ctx, "a/1", "one"); err != nil {
		t.Fatalf("Put in the permitted range: %v", err)
	}
	if v, err := c.Get(ctx, "a/1"); err != nil || v != "one" {
		t.Fatalf("Get a/1 = %q, %v", v, err)
	}
	if err := c.Put(ctx, "b/1", "x"); !errors.Is(err, rpctypes.ErrPermissionDenied) {
		t.Fatalf("Put outside the permitted range: err = %v, want permission denied", err)
	}

	// A batch with one read the user may not make: etcd refuses the whole
	// transaction, and every read must still get its own answer.
	var got [3]error
	var v0 string
	release := queueReads(t, c, []func() error{
		func() error { v0, got[0] = c.Get(ctx, "a/1"); return nil },
		func() error { _, got[1] = c.Get(ctx, "b/1"); return nil },
		func() error { _, got[2] = c.Get(ctx, "a/absent"); return nil },
	})
	release()
	if got[0] != nil || v0 != "one" {
		t.Errorf("permitted read in a refused batch: %q, %v", v0, got[0])
	}
	if !errors.Is(got[1], rpctypes.ErrPermissionDenied) {
		t.Errorf("forbidden read: err = %v, want permission denied", got[1])
	}
	if !errors.Is(got[2], ErrKeyNotFound) {
		t.Errorf("absent permitted key: err = %v, want ErrKeyNotFound", got[2])
	}

	// Credentials change live (a password rotation): the client is rebuilt
	// with them.
	if _, err := cluster.RootClient(t).UserChangePassword(ctx, "agent", "rotated"); err != nil {
		t.Fatal(err)
	}
	c.SetCredentials("agent", "rotated")
	etcdtest.Eventually(t, 10*time.Second, "a read with the rotated password", func() bool {
		v, err := c.Get(ctx, "a/1")
		return err == nil && v == "one"
	})
}

// A wrong password does not stop the client from being built: requests fail
// at once with ErrUnavailable, the health snapshot says why, and the right
// credentials repair it without a new client.
func TestAuthWrongPassword(t *testing.T) {
	cluster := etcdtest.New(t, 1)
	cluster.EnableAuth(t, "agent", "agentpw", "a/")
	c := newTestClient(t, Config{Endpoints: cluster.Endpoints(), Username: "agent", Password: "wrong"})
	ctx := ctxT(t, 20*time.Second)

	start := time.Now()
	_, err := c.Get(ctx, "a/1")
	if !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Get with a wrong password: err = %v, want ErrUnavailable", err)
	}
	t.Logf("wrong password: %v after %v", err, time.Since(start))
	etcdtest.Eventually(t, 10*time.Second, "the health snapshot to name the refusal", func() bool {
		h := c.Health()
		return !h.Connected && strings.Contains(h.LastError, "authentication failed")
	})

	c.SetCredentials("agent", "agentpw")
	etcdtest.Eventually(t, 10*time.Second, "a read with the right password", func() bool {
		_, err := c.Get(ctx, "a/1")
		return errors.Is(err, ErrKeyNotFound)
	})
	etcdtest.Eventually(t, 10*time.Second, "the health snapshot to say connected", func() bool { return c.Health().Connected })
}

// Endpoints applied while etcd is down are kept; with credentials the client
// is built (authenticated) by the health loop once etcd answers.
func TestAuthClientBuiltWhenEtcdReturns(t *testing.T) {
	cluster := etcdtest.New(t, 1)
	cluster.EnableAuth(t, "agent", "agentpw", "a/")
	c := newTestClient(t, Config{Username: "agent", Password: "agentpw"})
	cluster.Members[0].Stop()

	done := make(chan error, 1)
	go func() { done <- c.UpdateEndpoints(cluster.Endpoints()) }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("UpdateEndpoints while etcd is down: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("UpdateEndpoints waited for etcd")
	}
	if got := c.Endpoints(); len(got) != 1 || got[0] != cluster.Endpoints()[0] {
		t.Fatalf("Endpoints = %v", got)
	}
	start := time.Now()
	if _, err := c.Get(ctxT(t, 10*time.Second), "a/1"); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Get while etcd is down: err = %v, want ErrUnavailable", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("Get while etcd is down took %v, want it at once", d)
	}

	if err := cluster.Members[0].Restart(); err != nil {
		t.Fatal(err)
	}
	etcdtest.Eventually(t, 20*time.Second, "a read once etcd is back", func() bool {
		_, err := c.Get(ctxT(t, 5*time.Second), "a/1")
		return errors.Is(err, ErrKeyNotFound)
	})
}
