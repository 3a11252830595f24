package main

import (
	"fmt"
	"gopkg.in/yaml.v3"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/goreleaser/nfpm/v2"
)

// The package description names only files that exist, and its maintainer
// scripts parse. (.ci/run builds, lints, installs and purges the packages
// themselves; this catches a renamed file without building anything.)
// changelogDate is the top changelog entry's date, as YYYY-MM-DD.
func changelogDate(path string) (string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	var entries []struct {
		Date string `yaml:"date"`
	}
	if err := yaml.Unmarshal(data, &entries); err != nil || len(entries) == 0 {
		return "", fmt.Errorf("%s: %v", path, err)
	}
	d, _, _ := strings.Cut(entries[0].Date, "T")
	return d, nil
}

func TestPackageContents(t *testing.T) {
	t.Chdir("..")
	version, release, err := changelogVersion("packaging/changelog.yml")
	if err != nil || version == "" || release == "" {
		t.Fatalf("changelog version %q-%q: %v", version, release, err)
	}
	vars := map[string]string{"STAGE": "/nonexistent-stage", "VERSION": version, "RELEASE": release, "ARCH": "amd64"}
	cfg, err := nfpm.ParseFileWithEnvMapping("packaging/nfpm.yaml", func(k string) string { return vars[k] })
	if err != nil {
		t.Fatal(err)
	}
	for _, format := range []string{"deb", "rpm"} {
		info, err := cfg.Get(format)
		if err != nil {
			t.Fatal(err)
		}
		dsts := map[string]bool{}
		for _, c := range info.Contents {
			dsts[c.Destination] = true
			if c.Source == "" || strings.HasPrefix(c.Source, vars["STAGE"]) {
				continue // built by the packaging run
			}
			if _, err := os.Stat(c.Source); err != nil {
				t.Errorf("%s: %s -> %s: %v", format, c.Source, c.Destination, err)
			}
		}
		for _, want := range []string{"/usr/bin/endpointd", "/etc/endpointd/config.yaml", "/usr/lib/systemd/system/endpointd.service",
			"/usr/lib/sysusers.d/endpointd.conf", "/usr/lib/tmpfiles.d/endpointd.conf", "/usr/share/man/man1/endpointd.1.gz",
			"/usr/share/bash-completion/completions/endpointd"} {
			if !dsts[want] {
				t.Errorf("%s: nothing installs %s", format, want)
			}
		}
		for _, s := range []string{info.Scripts.PostInstall, info.Scripts.PreRemove, info.Scripts.PostRemove} {
			if s == "" {
				t.Errorf("%s: a maintainer script is missing", format)
				continue
			}
			if out, err := exec.Command("sh", "-n", s).CombinedOutput(); err != nil {
				t.Errorf("sh -n %s: %v\n%s", s, err, out)
			}
		}
	}
	// The man page names the release the changelog's top entry is.
	man, err := os.ReadFile("packaging/endpointd.1")
	if err != nil {
		t.Fatal(err)
	}
	date, err := changelogDate("packaging/changelog.yml")
	if err != nil {
		t.Fatal(err)
	}
	if th := strings.SplitN(string(man), "\n", 2)[0]; !strings.Contains(th, `"`+date+`"`) || !strings.Contains(th, "endpointd v"+version) {
		t.Errorf("packaging/endpointd.1 starts %q; want the changelog's date %s and version v%s (cmd/endpointd: releaseDate, version)", th, date, version)
	}
	// The units the package ships are the repository's: every one of them.
	units, _ := filepath.Glob("systemd/*.s*")
	if len(units) < 4 {
		t.Errorf("systemd/ holds only %d units: %v", len(units), units)
	}
	for _, format := range []string{"deb", "rpm"} {
		info, _ := cfg.Get(format)
		shipped := map[string]bool{}
		for _, c := range info.Contents {
			shipped[c.Destination] = true
		}
		for _, u := range units {
			if dst := "/usr/lib/systemd/system/" + filepath.Base(u); !shipped[dst] {
				t.Errorf("%s: %s is not shipped as %s", format, u, dst)
			}
		}
	}
}
