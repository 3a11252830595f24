package client_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"udp_iaasd/backoff"
	"udp_iaasd/client"
	"udp_iaasd/internal/etcdtest"
	"udp_iaasd/internal/sockettest"
)

// startAgent serves the real HTTP socket in front of a real cluster.
func startAgent(cluster *etcdtest.Cluster, sock string) (stop func(), err error) {
	a, err := sockettest.Start(sockettest.Options{Endpoints: cluster.Endpoints(), HTTP: sock})
	if err != nil {
		return nil, err
	}
	return a.Stop, nil
}

func serveAgent(t testing.TB, cluster *etcdtest.Cluster, sock string) (stop func()) {
	t.Helper()
	return sockettest.Serve(t, sockettest.Options{Endpoints: cluster.Endpoints(), HTTP: sock}).Stop
}

func TestRoundTripAndTypedErrors(t *testing.T) {
	cluster := etcdtest.New(t, 1)
	sock := filepath.Join(t.TempDir(), "a.sock")
	serveAgent(t, cluster, sock)
	c := client.New(sock, client.Options{})
	ctx := context.Background()

	keys := []string{"c/plain", "c//double//", "c/sp ace", "c/%2F", "c/\x00\xff", "c/ключ", "c/..", "c/?#&="}
	for i, k := range keys {
		v := []byte{byte(i), 0xff, 0x00, 'x'}
		rev, err := c.Put(ctx, k, v)
		if err != nil || rev == 0 {
			t.Fatalf("Put %q: %d, %v", k, rev, err)
		}
		kv, err := c.Get(ctx, k)
		if err != nil || string(kv.Value) != string(v) || kv.ModRevision != rev || string(kv.Key) != k {
			t.Fatalf("Get %q = %+v, %v", k, kv, err)
		}
	}
	res, err := c.List(ctx, "c/")
	if err != nil || len(res.KVs) != len(keys) || res.Count != int64(len(keys)) {
		t.Fatalf("List = %+v, %v", res, err)
	}
	for _, kv := range res.KVs {
		if !strings.HasPrefix(string(kv.Key), "c/") {
			t.Fatalf("listed %q", kv.Key)
		}
	}

	_, err = c.Get(ctx, "c/absent")
	var apiErr *client.Error
	if !errors.Is(err, client.ErrNotFound) || !errors.As(err, &apiErr) || apiErr.Status != 404 {
		t.Fatalf("absent key: %v", err)
	}
	rev, _ := c.Put(ctx, "c/cas", []byte("1"))
	if _, err := c.Put(ctx, "c/cas", []byte("2"), client.IfModRevision(rev+100)); !errors.Is(err, client.ErrPreconditionFailed) {
		t.Fatalf("stale CAS: %v", err)
	} else if errors.As(err, &apiErr) && apiErr.CurrentModRevision != rev {
		t.Fatalf("CurrentModRevision %d, want %d", apiErr.CurrentModRevision, rev)
	}
	if _, err := c.Put(ctx, "c/cas", []byte("2"), client.IfModRevision(rev)); err != nil {
		t.Fatalf("CAS: %v", err)
	}
	if _, err := c.Put(ctx, "c/new", []byte("x"), client.IfAbsent()); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Put(ctx, "c/new", []byte("x"), client.IfAbsent()); !errors.Is(err, client.ErrPreconditionFailed) {
		t.Fatalf("second create: %v", err)
	}
	if _, n, err := c.Delete(ctx, "c/", client.WithPrefix()); err != nil || n != int64(len(keys)+2) { // and c/cas, c/new
		t.Fatalf("Delete prefix: %d, %v", n, err)
	}
	if _, err := c.Put(ctx, "", []byte("x")); !errors.Is(err, client.ErrInvalidArgument) {
		t.Fatalf("empty key: %v", err)
	}
}

// A dead agent is ErrUnavailable after the retries; a write is not retried
// on a 504.
func TestUnavailableAndRetries(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "none.sock")
	c := client.New(sock, client.Options{RetryMax: 2, Backoff: fastBackoff})
	start := time.Now()
	_, err := c.Get(context.Background(), "k")
	if !errors.Is(err, client.ErrUnavailable) {
		t.Fatalf("no agent: %v", err)
	}
	t.Logf("gave up after %v", time.Since(start))

	// An agent that comes up during the retries is reached.
	cluster := etcdtest.New(t, 1)
	c2 := client.New(sock, client.Options{RetryMax: 20, Backoff: fastBackoff})
	go func() {
		time.Sleep(300 * time.Millisecond)
		serveAgent(t, cluster, sock)
	}()
	if _, err := c2.Put(context.Background(), "k", []byte("v")); err != nil {
		t.Fatalf("Put while the agent starts: %v", err)
	}

	// 504 for a write is never retried: count requests at a fake endpoint
	// that answers 504 (the outcome-unknown case; etcd is not involved).
	var calls atomic.Int32
	fake := filepath.Join(t.TempDir(), "fake.sock")
	ln, err := net.Listen("unix", fake)
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusGatewayTimeout)
		fmt.Fprint(w, `{"error":"etcd did not answer","code":"timeout"}`)
	})}
	go hs.Serve(ln)
	t.Cleanup(func() { hs.Close() })
	c3 := client.New(fake, client.Options{RetryMax: 5, Backoff: fastBackoff})
	if _, err := c3.Put(context.Background(), "k", []byte("v")); !errors.Is(err, client.ErrTimeout) {
		t.Fatalf("504: %v", err)
	}
	if n := calls.Load(); n != 1 {
		t.Fatalf("a write that timed out was sent %d times", n)
	}
}

var fastBackoff = backoff.Policy{Initial: 20 * time.Millisecond, Max: 200 * time.Millisecond, Multiplier: 2, Jitter: 0.2}

// Watch resumes from the last revision when the agent restarts, with no
// missed and no repeated events.
func TestWatchResumesAcrossAgentRestart(t *testing.T) {
	cluster := etcdtest.New(t, 1)
	sock := filepath.Join(t.TempDir(), "a.sock")
	stop := serveAgent(t, cluster, sock)
	c := client.New(sock, client.Options{RetryMax: 50, Backoff: fastBackoff})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	events := make(chan client.Event, 100)
	errc := make(chan error, 1)
	go func() {
		for ev, err := range c.Watch(ctx, "wr/", client.WithPrefix(), client.Heartbeat(200*time.Millisecond)) {
			if err != nil {
				errc <- err
				return
			}
			if ev.Type != "PROGRESS" {
				events <- ev
			}
		}
	}()
	direct := cluster.Client(t)
	put := func(i int) {
		if _, err := direct.Put(ctx, fmt.Sprintf("wr/%02d", i), "v"); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(300 * time.Millisecond)
	for i := range 5 {
		put(i)
	}
	recv := func(i int) {
		select {
		case ev := <-events:
			if string(ev.KV.Key) != fmt.Sprintf("wr/%02d", i) {
				t.Fatalf("event %d = %s", i, ev.KV.Key)
			}
		case err := <-errc:
			t.Fatalf("watch ended: %v", err)
		case <-ctx.Done():
			t.Fatalf("no event %d", i)
		}
	}
	for i := range 5 {
		recv(i)
	}
	stop() // the agent goes away; writes go on meanwhile
	for i := 5; i < 10; i++ {
		put(i)
	}
	os.Remove(sock)
	serveAgent(t, cluster, sock)
	for i := 10; i < 15; i++ {
		put(i)
	}
	for i := 5; i < 15; i++ {
		recv(i)
	}
	select {
	case ev := <-events:
		t.Fatalf("extra event %s", ev.KV.Key)
	case <-time.After(500 * time.Millisecond):
	}
}

// One revision can hold several events (a transaction, or puts the agent
// batched). A stream that breaks between two of them is resumed at that
// revision, and only the events not yet yielded are yielded: none missed,
// none repeated. The agent side is a scripted server here, because the
// break must fall exactly between two events of one revision.
func TestWatchResumesInsideARevision(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "script.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var revs []string // the rev parameter of each stream asked for
	hs := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		revs = append(revs, r.URL.Query().Get("rev"))
		n := len(revs)
		mu.Unlock()
		w.Header().Set("X-Etcd-Revision", "9")
		w.WriteHeader(http.StatusOK)
		line := func(s string) { fmt.Fprintln(w, s); w.(http.Flusher).Flush() }
		if n == 1 {
			line(`{"type":"PUT","key":"a","value":"1","mod_revision":10,"create_revision":10,"version":1,"lease":0}`)
			// The connection breaks before b, also of revision 10.
			conn, _, _ := http.NewResponseController(w).Hijack()
			conn.Close()
			return
		}
		line(`{"type":"PUT","key":"a","value":"1","mod_revision":10,"create_revision":10,"version":1,"lease":0}`)
		line(`{"type":"PUT","key":"b","value":"2","mod_revision":10,"create_revision":10,"version":1,"lease":0}`)
		line(`{"type":"PUT","key":"c","value":"3","mod_revision":11,"create_revision":11,"version":1,"lease":0}`)
		<-r.Context().Done()
	})}
	go hs.Serve(ln)
	t.Cleanup(func() { hs.Close() })

	c := client.New(sock, client.Options{RetryMax: 3, Backoff: fastBackoff})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var got []string
	for ev, err := range c.Watch(ctx, "", client.WithPrefix()) {
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, fmt.Sprintf("%s@%d", ev.KV.Key, ev.Revision))
		if len(got) == 3 {
			break
		}
	}
	if want := "[a@10 b@10 c@11]"; fmt.Sprint(got) != want {
		t.Fatalf("events %v, want %s", got, want)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(revs) != 2 || revs[1] != "10" {
		t.Fatalf("streams asked for rev %q; the resume must ask for 10, the revision it was inside", revs)
	}
}
