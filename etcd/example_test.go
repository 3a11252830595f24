package etcd_test

import (
	"context"
	"fmt"
	"log"
	"os"
	"strings"
	"time"

	"udp_iaasd/etcd"
	"udp_iaasd/internal/etcdtest"
)

// The seed document's usage, verbatim, against a real three-member cluster.
func Example() {
	cluster, err := etcdtest.Start(etcdtest.Options{Members: 3})
	if err != nil {
		log.Fatal(err)
	}
	defer cluster.Close()
	os.Setenv("ETCD_ENDPOINTS", strings.Join(cluster.Endpoints(), ","))

	client := etcd.GetClient() // Singleton instance
	defer client.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()

	err = client.Put(ctx, "foo", "bar")
	if err != nil {
		log.Fatal(err)
	}
	value, err := client.Get(ctx, "foo")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("Value:", value)

	err = client.Delete(ctx, "foo")
	if err != nil {
		log.Fatal(err)
	}

	// Endpoint management: the list is validated as a whole before it is used.
	err = client.UpdateEndpoints(cluster.Endpoints())
	if err != nil {
		log.Fatal("Failed to update endpoints:", err)
	}
	err = client.RemoveEndpoint(cluster.Endpoints()[2])
	if err != nil {
		log.Fatal("Failed to remove endpoint:", err)
	}
	fmt.Println("Endpoints:", len(client.Endpoints()))
	// Output:
	// Value: bar
	// Endpoints: 2
}

// NewCustomClient builds a client with its own endpoints and timeouts; an
// invalid list surfaces as an error from every call, never a panic.
func ExampleNewCustomClient() {
	c := etcd.NewCustomClient([]string{"node1:2379", "node1:2379"}, 2*time.Second)
	defer c.Close()
	err := c.Put(context.Background(), "foo", "bar")
	fmt.Println(err)
	// Output:
	// etcd: endpoints: endpoint "node1:2379": duplicate of entry 1 ("node1:2379"), both are http://node1:2379
}
