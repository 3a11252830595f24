package config

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

var update = flag.Bool("update", false, "rewrite testdata/**/*.err from the current output (review the diff!)")

// Each testdata/<kind>/*.good.yml must load; each *.bad.yml must fail with
// exactly the lines of the .err file beside it: message and position both.
func TestCorpus(t *testing.T) {
	loaders := map[string]func(file string, data []byte) error{
		"endpoints": func(file string, data []byte) error {
			_, err := ParseEndpoints(file, data, false, 3)
			return err
		},
		"config": func(file string, data []byte) error {
			_, err := Parse(file, data)
			return err
		},
	}
	for kind, load := range loaders {
		files, err := filepath.Glob(filepath.Join("testdata", kind, "*.yml"))
		if err != nil || len(files) == 0 {
			t.Fatalf("no corpus for %s: %v", kind, err)
		}
		for _, f := range files {
			t.Run(kind+"/"+filepath.Base(f), func(t *testing.T) {
				data, err := os.ReadFile(f)
				if err != nil {
					t.Fatal(err)
				}
				err = load(filepath.Base(f), data)
				if strings.HasSuffix(f, ".good.yml") {
					if err != nil {
						t.Fatalf("good file rejected:\n%v", err)
					}
					return
				}
				if err == nil {
					t.Fatal("bad file accepted")
				}
				if !errors.Is(err, ErrInvalid) {
					t.Fatalf("error %v is not ErrInvalid", err)
				}
				errFile := strings.TrimSuffix(f, ".yml") + ".err"
				if *update {
					if err := os.WriteFile(errFile, []byte(err.Error()+"\n"), 0o644); err != nil {
						t.Fatal(err)
					}
				}
				want, rerr := os.ReadFile(errFile)
				if rerr != nil {
					t.Fatalf("missing %s (run with -update and review): %v", errFile, rerr)
				}
				if got := err.Error() + "\n"; got != string(want) {
					t.Fatalf("got:\n%s\nwant:\n%s", got, want)
				}
			})
		}
	}
}

func TestOversizedFile(t *testing.T) {
	var b strings.Builder
	b.WriteString("endpoints:\n")
	for i := 0; b.Len() <= MaxFileBytes; i++ {
		fmt.Fprintf(&b, "  - h%07d.example:2379\n", i)
	}
	path := filepath.Join(t.TempDir(), "endpoints.yaml")
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	data, err := ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(data) != MaxFileBytes+1 {
		t.Fatalf("ReadFile read %d bytes, want it to stop at %d", len(data), MaxFileBytes+1)
	}
	_, err = ParseEndpoints(path, data, false, 1)
	if err == nil || !strings.Contains(err.Error(), "larger than the 1 MiB limit") {
		t.Fatalf("oversized file: %v", err)
	}
}

func TestDefaultsAndOverrides(t *testing.T) {
	if err := Default().Validate(); err != nil {
		t.Fatalf("defaults invalid: %v", err)
	}
	c, err := Parse("/etc/endpointd/config.yaml", []byte(`
endpoints_file: eps/endpoints.yaml
socket: {mode: 0600, group: 1000, allowed_uids: [0, 1000]}
etcd: {request_timeout: 1m30s, tls: {server_name: etcd.internal}}
backoff: {jitter: 0}
cache: {prefixes: [app/, cfg/]}
`))
	if err != nil {
		t.Fatal(err)
	}
	checks := []struct {
		name      string
		got, want any
	}{
		{"relative endpoints_file", c.EndpointsFile, "/etc/endpointd/eps/endpoints.yaml"},
		{"unquoted octal mode", c.Socket.Mode, uint32(0o600)},
		{"numeric group", c.Socket.Group, "1000"},
		{"uids", fmt.Sprint(c.Socket.AllowedUIDs), "[0 1000]"},
		{"duration", c.Etcd.RequestTimeout, 90 * time.Second},
		{"untouched default", c.Etcd.DialTimeout, 5 * time.Second},
		{"untouched section default", c.MinClusterSize, 3},
		{"zero jitter kept", c.Backoff.Jitter, 0.0},
		{"tls enabled", c.Etcd.TLS.Enabled(), true},
		{"prefixes", slices.Equal(c.Cache.Prefixes, []string{"app/", "cfg/"}), true},
	}
	for _, ck := range checks {
		if ck.got != ck.want {
			t.Errorf("%s: got %v, want %v", ck.name, ck.got, ck.want)
		}
	}
}

func TestEndpointsTLSDefault(t *testing.T) {
	data := []byte("endpoints: [a:1, b:1, c:1]\n")
	eps, err := ParseEndpoints("e.yaml", data, true, 3)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"https://a:1", "https://b:1", "https://c:1"}
	if got := eps.Strings(); !slices.Equal(got, want) {
		t.Fatalf("got %v, want %v", got, want)
	}
}

func FuzzParseEndpoints(f *testing.F) {
	files, _ := filepath.Glob(filepath.Join("testdata", "endpoints", "*.yml"))
	for _, file := range files {
		if data, err := os.ReadFile(file); err == nil {
			f.Add(data)
		}
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		eps, err := ParseEndpoints("e.yaml", data, false, 1)
		if err != nil {
			var probs Errors
			if !errors.As(err, &probs) || len(probs) == 0 {
				t.Fatalf("error %v is not a non-empty Errors", err)
			}
			return
		}
		if len(eps.List) == 0 {
			t.Fatal("a valid file with no endpoints")
		}
	})
}

func FuzzParseConfig(f *testing.F) {
	files, _ := filepath.Glob(filepath.Join("testdata", "config", "*.yml"))
	for _, file := range files {
		if data, err := os.ReadFile(file); err == nil {
			f.Add(data)
		}
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		c, err := Parse("c.yaml", data)
		if err == nil {
			if verr := c.Validate(); verr != nil {
				t.Fatalf("Parse accepted a config that Validate rejects: %v", verr)
			}
		}
	})
}

// Diff applies live settings and keeps (and names) restart-only ones.
func TestDiff(t *testing.T) {
	tests := []struct {
		name    string
		edit    func(c *Config)
		changed []string
		check   func(live *Config) bool
	}{
		{"nothing", func(c *Config) {}, nil, func(l *Config) bool { return true }},
		{"live: request_timeout, min_cluster_size, log.level", func(c *Config) {
			c.Etcd.RequestTimeout, c.MinClusterSize, c.Log.Level = 9*time.Second, 1, "debug"
		}, nil, func(l *Config) bool {
			return l.Etcd.RequestTimeout == 9*time.Second && l.MinClusterSize == 1 && l.Log.Level == "debug"
		}},
		{"restart-only: socket.path, backoff.max, cache.prefixes", func(c *Config) {
			c.Socket.Path, c.Backoff.Max, c.Cache.Prefixes = "/elsewhere.sock", time.Minute, []string{"app/"}
		}, []string{"socket.path", "backoff", "cache.prefixes"}, func(l *Config) bool {
			d := Default()
			return l.Socket.Path == d.Socket.Path && l.Backoff == d.Backoff && len(l.Cache.Prefixes) == 0
		}},
		{"both at once", func(c *Config) {
			c.Limits.MaxValueBytes, c.Limits.MaxConnections = 10, 10
		}, []string{"limits.max_connections"}, func(l *Config) bool {
			return l.Limits.MaxValueBytes == 10 && l.Limits.MaxConnections == Default().Limits.MaxConnections
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			running, next := Default(), Default()
			tt.edit(next)
			live, changed := Diff(running, next)
			if !slices.Equal(changed, tt.changed) {
				t.Errorf("changed = %v, want %v", changed, tt.changed)
			}
			if !tt.check(live) {
				t.Errorf("live = %+v", live)
			}
		})
	}
}

// socket.group is a gid as given, a group's gid looked up by name, or -1
// (keep the process's group) when empty; an unknown name is an error naming
// the setting.
func TestSocketGID(t *testing.T) {
	root, err := user.LookupGroupId("0")
	if err != nil {
		t.Skipf("no group 0 here: %v", err)
	}
	for _, tc := range []struct {
		group string
		want  int
		err   string
	}{
		{"", -1, ""},
		{"4242", 4242, ""},
		{root.Name, 0, ""},
		{"no-such-group-endpointd", 0, "socket.group: unknown group"},
	} {
		got, err := Socket{Group: tc.group}.GID()
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("GID(%q) = %d, %v; want an error with %q", tc.group, got, err, tc.err)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("GID(%q) = %d, %v; want %d", tc.group, got, err, tc.want)
		}
	}
}
