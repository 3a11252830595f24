package client_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"os"
	"path/filepath"

	"udp_iaasd/client"
	"udp_iaasd/internal/etcdtest"
)

// exampleAgent stands in for the agent a host runs under systemd: a real
// etcd cluster and the real server on a socket.
func exampleAgent() (sock string, cleanup func()) {
	cluster, err := etcdtest.Start(etcdtest.Options{Members: 1})
	if err != nil {
		log.Fatal(err)
	}
	dir, _ := os.MkdirTemp("", "client-example-")
	sock = filepath.Join(dir, "endpointd.sock")
	stop, err := startAgent(cluster, sock)
	if err != nil {
		log.Fatal(err)
	}
	return sock, func() { stop(); cluster.Close(); os.RemoveAll(dir) }
}

func Example() {
	sock, cleanup := exampleAgent() // on a host: client.DefaultSocket
	defer cleanup()

	c := client.New(sock, client.Options{})
	ctx := context.Background()

	rev, err := c.Put(ctx, "app/config", []byte(`{"replicas": 3}`))
	if err != nil {
		log.Fatal(err)
	}
	kv, err := c.Get(ctx, "app/config")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("%s (written at revision %v)\n", kv.Value, kv.ModRevision == rev)

	// Compare-and-swap: only one writer of a given revision wins.
	_, err = c.Put(ctx, "app/config", []byte(`{"replicas": 5}`), client.IfModRevision(rev))
	fmt.Println("first swap:", err)
	_, err = c.Put(ctx, "app/config", []byte(`{"replicas": 7}`), client.IfModRevision(rev))
	fmt.Println("second swap lost:", errors.Is(err, client.ErrPreconditionFailed))

	_, err = c.Get(ctx, "app/absent")
	fmt.Println("absent:", errors.Is(err, client.ErrNotFound))
	// Output:
	// {"replicas": 3} (written at revision true)
	// first swap: <nil>
	// second swap lost: true
	// absent: true
}

func ExampleClient_Watch() {
	sock, cleanup := exampleAgent()
	defer cleanup()
	c := client.New(sock, client.Options{})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()

	first, _ := c.Put(ctx, "jobs/1", []byte("queued"))
	c.Put(ctx, "jobs/1", []byte("running"))
	c.Delete(ctx, "jobs/1")

	// Replay from a revision, then keep following: each event once, in order.
	n := 0
	for ev, err := range c.Watch(ctx, "jobs/", client.WithPrefix(), client.AtRevision(first)) {
		if err != nil {
			log.Fatal(err)
		}
		if ev.Type == "PROGRESS" {
			continue
		}
		fmt.Println(ev.Type, string(ev.KV.Key), string(ev.KV.Value))
		if n++; n == 3 {
			break
		}
	}
	// Output:
	// PUT jobs/1 queued
	// PUT jobs/1 running
	// DELETE jobs/1
}
