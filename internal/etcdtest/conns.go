package etcdtest

import (
	"bufio"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// TCPConns counts the established TCP connections that process pid holds,
// by remote port: what a client process costs the servers it talks to.
// It reads /proc (Linux only): the process's socket inodes from its fd
// table, matched against the kernel's TCP tables of its network namespace.
func TCPConns(pid int) (map[int]int, error) {
	inodes := map[string]bool{}
	fdDir := fmt.Sprintf("/proc/%d/fd", pid)
	fds, err := os.ReadDir(fdDir)
	if err != nil {
		return nil, fmt.Errorf("etcdtest: tcp conns of %d: %w", pid, err)
	}
	for _, fd := range fds {
		link, err := os.Readlink(filepath.Join(fdDir, fd.Name()))
		if err == nil && strings.HasPrefix(link, "socket:[") {
			inodes[strings.TrimSuffix(strings.TrimPrefix(link, "socket:["), "]")] = true
		}
	}
	out := map[int]int{}
	for _, table := range []string{"tcp", "tcp6"} {
		f, err := os.Open(fmt.Sprintf("/proc/%d/net/%s", pid, table))
		if err != nil {
			continue // no IPv6 in this kernel
		}
		sc := bufio.NewScanner(f)
		sc.Scan() // header
		for sc.Scan() {
			// sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
			fields := strings.Fields(sc.Text())
			if len(fields) < 10 || fields[3] != "01" || !inodes[fields[9]] { // 01: ESTABLISHED
				continue
			}
			rem := fields[2]
			port, err := strconv.ParseInt(rem[strings.LastIndexByte(rem, ':')+1:], 16, 32)
			if err == nil {
				out[int(port)]++
			}
		}
		f.Close()
	}
	return out, nil
}

// ServedConns returns the established TCP connections of this network
// namespace whose local port is one of ports — what servers on those ports
// have accepted — keyed "localport remoteaddr" (a connection's identity
// while it lasts), each with its local port.
func ServedConns(ports []int) (map[string]int, error) {
	want := map[int]bool{}
	for _, p := range ports {
		want[p] = true
	}
	out := map[string]int{}
	for _, table := range []string{"tcp", "tcp6"} {
		f, err := os.Open("/proc/self/net/" + table)
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(f)
		sc.Scan()
		for sc.Scan() {
			fields := strings.Fields(sc.Text())
			if len(fields) < 4 || fields[3] != "01" {
				continue
			}
			loc := fields[1]
			port, err := strconv.ParseInt(loc[strings.LastIndexByte(loc, ':')+1:], 16, 32)
			if err == nil && want[int(port)] {
				out[loc+" "+fields[2]] = int(port)
			}
		}
		f.Close()
	}
	return out, nil
}

// scrapeClient keeps no connection open after a scrape, so that scraping
// does not add to the connections being counted.
var scrapeClient = &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}

// Gauge scrapes a member's /metrics for the value of an unlabelled metric.
func Gauge(clientURL, name string) (float64, error) { return GaugeVia(scrapeClient, clientURL, name) }

// GaugeVia is Gauge through hc: an agent's /metrics on its unix socket, say
// (clientURL is then any http URL; hc's transport decides where it goes).
func GaugeVia(hc *http.Client, clientURL, name string) (float64, error) {
	resp, err := hc.Get(strings.TrimSuffix(clientURL, "/") + "/metrics")
	if err != nil {
		return 0, fmt.Errorf("etcdtest: scrape %s: %w", clientURL, err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			return strconv.ParseFloat(v, 64)
		}
	}
	return 0, fmt.Errorf("etcdtest: %s has no metric %s", clientURL, name)
}

// UnaryRPCs scrapes a member's /metrics (on its client URL) for the unary
// gRPC calls it has started, by method: etcd's own count
// (grpc_server_started_total), so it works for members in other processes.
func UnaryRPCs(clientURL string) (map[string]float64, error) {
	resp, err := scrapeClient.Get(strings.TrimSuffix(clientURL, "/") + "/metrics")
	if err != nil {
		return nil, fmt.Errorf("etcdtest: scrape %s: %w", clientURL, err)
	}
	defer resp.Body.Close()
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "grpc_server_started_total{") || !strings.Contains(line, `grpc_type="unary"`) {
			continue
		}
		_, rest, _ := strings.Cut(line, `grpc_method="`)
		method, _, _ := strings.Cut(rest, `"`)
		v, err := strconv.ParseFloat(line[strings.LastIndexByte(line, ' ')+1:], 64)
		if err == nil {
			out[method] += v
		}
	}
	return out, sc.Err()
}
