package client_test

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"udp_iaasd/client"
	"udp_iaasd/internal/etcdtest"
)

// The Go client's transactions: every compare constructor, every operation
// with its options, binary keys and values, both branches.
func TestTxn(t *testing.T) {
	cluster := etcdtest.New(t, 1)
	sock := filepath.Join(t.TempDir(), "a.sock")
	serveAgent(t, cluster, sock)
	c := client.New(sock, client.Options{})
	ctx := context.Background()

	bin := "ct/\x00\xff"
	rev, err := c.Put(ctx, bin, []byte{0, 1})
	if err != nil {
		t.Fatal(err)
	}
	res, err := c.Txn(ctx, client.Txn{
		Compare: []client.Compare{
			client.CompareValue(bin, "=", []byte{0, 1}),
			client.CompareModRevision(bin, "=", rev),
			client.CompareCreateRevision(bin, "=", rev),
			client.CompareVersion(bin, "=", 1),
			client.CompareLease(bin, "=", 0),
		},
		Success: []client.Op{
			client.OpPut("ct/a", []byte("A"), client.TTL(30*time.Second)),
			client.OpPut("ct/b", []byte{0xff}),
			client.OpGet("ct/", client.WithPrefix(), client.Limit(2), client.KeysOnly()),
			client.OpDelete(bin),
		},
		Failure: []client.Op{client.OpGet(bin)},
	})
	if err != nil || !res.Succeeded || len(res.Results) != 4 {
		t.Fatalf("Txn = %+v, %v", res, err)
	}
	if g := res.Results[2]; g.Count != 3 || !g.More || len(g.KVs) != 2 || g.KVs[0].Value != nil {
		t.Fatalf("get result %+v", g)
	}
	if res.Results[3].Deleted != 1 {
		t.Fatalf("delete result %+v", res.Results[3])
	}
	kv, err := c.Get(ctx, "ct/a")
	if err != nil || kv.Lease == 0 || string(kv.Value) != "A" {
		t.Fatalf("the TTL put: %+v %v", kv, err)
	}
	// The compares no longer hold: the failure branch reads, nothing else.
	res, err = c.Txn(ctx, client.Txn{
		Compare: []client.Compare{client.CompareVersion(bin, ">", 0)},
		Failure: []client.Op{client.OpGet("ct/b")},
	})
	if err != nil || res.Succeeded || len(res.Results) != 1 || len(res.Results[0].KVs) != 1 ||
		string(res.Results[0].KVs[0].Value) != "\xff" {
		t.Fatalf("failure branch: %+v %v", res, err)
	}
}
