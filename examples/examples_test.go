// Package examples holds the example files; this test keeps them valid.
package examples

import (
	"os"
	"strings"
	"testing"

	"udp_iaasd/config"
)

func TestExamplesAreValid(t *testing.T) {
	cfg, err := config.Load("config.yaml")
	if err != nil {
		t.Fatalf("examples/config.yaml: %v", err)
	}
	def := config.Default()
	def.EndpointsFile = cfg.EndpointsFile
	if cfg.MinClusterSize != def.MinClusterSize || cfg.Etcd != def.Etcd || cfg.Backoff != def.Backoff ||
		cfg.Watch != def.Watch || cfg.Cache.MaxStaleness != def.Cache.MaxStaleness ||
		cfg.Cache.Dir != def.Cache.Dir || cfg.Cache.PersistInterval != def.Cache.PersistInterval || cfg.Cache.StaleIfError != def.Cache.StaleIfError || cfg.Limits != def.Limits || cfg.Log != def.Log || cfg.Socket.Path != def.Socket.Path ||
		cfg.Socket.Mode != def.Socket.Mode {
		t.Fatalf("examples/config.yaml no longer shows the defaults:\n%+v\n%+v", cfg, def)
	}
	data, err := os.ReadFile("endpoints.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := config.ParseEndpoints("endpoints.yaml", data, cfg.Etcd.TLS.Enabled(), cfg.MinClusterSize); err != nil {
		t.Fatalf("examples/endpoints.yaml: %v", err)
	}
}

// The example marks exactly the settings config.Diff treats as
// restart-only with [restart]: a key is marked when the comment block right
// above it says so, when it follows a marked key directly (a group), or when
// its section is marked.
func TestRestartMarksMatchConfig(t *testing.T) {
	data, err := os.ReadFile("config.yaml")
	if err != nil {
		t.Fatal(err)
	}
	marked := map[string]bool{} // key path → marked
	var path []string           // the section path at each indentation level
	comment, prevMarked := false, false
	for line := range strings.SplitSeq(string(data), "\n") {
		trimmed := strings.TrimSpace(line)
		switch {
		case trimmed == "":
			comment, prevMarked = false, false
			continue
		case strings.HasPrefix(trimmed, "#"):
			if !comment {
				comment, prevMarked = true, false
			}
			prevMarked = prevMarked || strings.Contains(trimmed, "[restart]")
			continue
		}
		level := (len(line) - len(strings.TrimLeft(line, " "))) / 2
		key, _, _ := strings.Cut(trimmed, ":")
		path = append(path[:min(level, len(path))], key)
		p := strings.Join(path, ".")
		parent := strings.Join(path[:len(path)-1], ".")
		marked[p] = prevMarked || marked[parent]
		comment = false // a group: the next key inherits this one's mark
		prevMarked = marked[p]
	}
	restart := map[string]bool{}
	for _, name := range config.RestartOnly() {
		restart[name] = true
		if _, ok := marked[name]; !ok {
			t.Errorf("%s is restart-only but not in the example", name)
			continue
		}
		children, allMarked := 0, true
		for p, m := range marked {
			if strings.HasPrefix(p, name+".") {
				children++
				allMarked = allMarked && m
			}
		}
		if !marked[name] && (children == 0 || !allMarked) {
			t.Errorf("%s is restart-only but the example does not mark it [restart]", name)
		}
	}
	for p, m := range marked {
		if !m {
			continue
		}
		covered := false
		for name := range restart {
			covered = covered || p == name || strings.HasPrefix(p, name+".") || strings.HasPrefix(name, p+".")
		}
		if !covered {
			t.Errorf("the example marks %s [restart], but a reload applies it live", p)
		}
	}
}
