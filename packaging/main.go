// Command packaging builds endpointd's .deb and .rpm. From the repository
// root:
//
//	go run ./packaging              # dist/endpointd_0.1.0-1_amd64.deb, dist/endpointd-0.1.0-1.x86_64.rpm
//	go run ./packaging -arch arm64  # cross-built
//	go run ./packaging -sign-key release.asc   # the .rpm signed
//
// It builds the agent without the dev cluster (-tags nodev), compresses the
// man page and README, and hands packaging/nfpm.yaml to nfpm (as a
// library, pinned in go.mod, so the packages need no tool installed). The
// version is the top entry of packaging/changelog.yml; the binary reports it.
// Packages are reproducible: every timestamp is the last commit's (or
// $SOURCE_DATE_EPOCH).
package main

import (
	"bytes"
	"compress/gzip"
	"debug/elf"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/goreleaser/nfpm/v2"
	_ "github.com/goreleaser/nfpm/v2/deb" // registers the deb packager
	_ "github.com/goreleaser/nfpm/v2/rpm" // registers the rpm packager
	"gopkg.in/yaml.v3"
)

func main() {
	out := flag.String("out", "dist", "directory to write the packages to")
	arch := flag.String("arch", runtime.GOARCH, "GOARCH to build for")
	signKey := flag.String("sign-key", "", "sign the .rpm with this armored PGP private key (passphrase, if any, in $ENDPOINTD_SIGN_PASSPHRASE)")
	flag.Parse()
	if err := build(*out, *arch, *signKey, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "packaging:", err)
		os.Exit(1)
	}
}

func build(out, arch, signKey string, log io.Writer) error {
	if _, err := os.Stat("packaging/nfpm.yaml"); err != nil {
		return fmt.Errorf("run from the repository root (go run ./packaging): %w", err)
	}
	version, release, err := changelogVersion("packaging/changelog.yml")
	if err != nil {
		return err
	}
	mtime, err := sourceDate()
	if err != nil {
		return err
	}
	stage, err := os.MkdirTemp("", "endpointd-packaging-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(stage)

	// The agent alone: no etcd server, no test kit. Built with cgo on every
	// architecture, so that the binary uses the system's resolver and NSS
	// (user and group names in access rules come from NSS, LDAP included),
	// as a distribution's own Go packages do: an access rule naming an LDAP
	// user must mean the same on amd64 and arm64. Go turns cgo off when it
	// cross-compiles, so a cross build names its C compiler, and one that
	// is not there is an error, never a quietly different binary.
	env := append(os.Environ(), "GOOS=linux", "GOARCH="+arch, "CGO_ENABLED=1")
	if arch != runtime.GOARCH && os.Getenv("CC") == "" {
		cc, ok := crossCC[arch]
		if !ok {
			return fmt.Errorf("no C cross-compiler known for %s: set CC", arch)
		}
		if _, err := exec.LookPath(cc); err != nil {
			return fmt.Errorf("building for %s needs cgo and %s (Debian: apt-get install gcc-%s): %w", arch, cc, strings.TrimSuffix(cc, "-gcc"), err)
		}
		env = append(env, "CC="+cc)
	}
	bin := filepath.Join(stage, "endpointd")
	goBuild := exec.Command("go", "build", "-tags", "nodev", "-trimpath", "-buildmode=pie",
		"-ldflags", "-s -w -X main.version=v"+version, "-o", bin, "./cmd/endpointd")
	goBuild.Env = env
	goBuild.Stdout, goBuild.Stderr = log, os.Stderr
	if err := goBuild.Run(); err != nil {
		return fmt.Errorf("go build: %w", err)
	}
	glibc, err := glibcNeeded(bin)
	if err != nil {
		return err
	}
	fmt.Fprintf(log, "endpointd for %s: dynamically linked, needs glibc %s\n", arch, glibc)
	for src, dst := range map[string]string{
		"packaging/endpointd.1": "endpointd.1.gz",
		"README.md":             "README.md.gz",
		"docs/api.md":           "api.md.gz",
		"docs/render.md":        "render.md.gz",
	} {
		if err := gzipFile(src, filepath.Join(stage, dst)); err != nil {
			return err
		}
	}

	vars := map[string]string{"STAGE": stage, "VERSION": version, "RELEASE": release, "ARCH": arch}
	cfg, err := nfpm.ParseFileWithEnvMapping("packaging/nfpm.yaml", func(k string) string { return vars[k] })
	if err != nil {
		return fmt.Errorf("packaging/nfpm.yaml: %w", err)
	}
	if err := os.MkdirAll(out, 0o755); err != nil {
		return err
	}
	for _, format := range []string{"deb", "rpm"} {
		info, err := cfg.Get(format)
		if err != nil {
			return fmt.Errorf("%s: %w", format, err)
		}
		info = nfpm.WithDefaults(info)
		info.MTime = mtime
		// The C library the binary was linked against, at the version its
		// symbols need, not any.
		for i, d := range info.Depends {
			switch d {
			case "libc6":
				info.Depends[i] = "libc6 (>= " + glibc + ")"
			case "glibc":
				info.Depends[i] = "glibc >= " + glibc
			}
		}
		if signKey != "" {
			// Only the rpm: rpm checks a package's own signature on
			// install; Debian signs the repository (Release), and a
			// signed .deb (_gpgorigin) is something lintian refuses.
			pass := os.Getenv("ENDPOINTD_SIGN_PASSPHRASE")
			info.RPM.Signature.KeyFile, info.RPM.Signature.KeyPassphrase = signKey, pass
		}
		for _, c := range info.Contents {
			if c.FileInfo != nil {
				c.FileInfo.MTime = mtime
			}
		}
		pkg, err := nfpm.Get(format)
		if err != nil {
			return err
		}
		target := filepath.Join(out, pkg.ConventionalFileName(info))
		if err := writePackage(pkg, info, target); err != nil {
			return fmt.Errorf("%s: %w", target, err)
		}
		fmt.Fprintln(log, target)
	}
	return nil
}

// crossCC is the C compiler Debian's cross toolchains name for an arch.
var crossCC = map[string]string{"arm64": "aarch64-linux-gnu-gcc", "amd64": "x86_64-linux-gnu-gcc"}

// glibcNeeded checks that bin is dynamically linked against glibc (a cgo
// build) and returns the highest GLIBC_ symbol version it imports: what the
// packages must depend on.
func glibcNeeded(bin string) (string, error) {
	f, err := elf.Open(bin)
	if err != nil {
		return "", err
	}
	defer f.Close()
	libs, err := f.ImportedLibraries()
	if err != nil || !slices.Contains(libs, "libc.so.6") {
		return "", fmt.Errorf("%s does not link libc.so.6 (%v, %v): built without cgo, it would not use NSS", bin, libs, err)
	}
	syms, err := f.DynamicSymbols()
	if err != nil {
		return "", err
	}
	best := []int{0}
	for _, s := range syms {
		v, ok := strings.CutPrefix(s.Version, "GLIBC_")
		if !ok {
			continue
		}
		var parts []int
		for _, p := range strings.Split(v, ".") {
			n, err := strconv.Atoi(p)
			if err != nil {
				parts = nil
				break
			}
			parts = append(parts, n)
		}
		if parts != nil && slices.Compare(parts, best) > 0 {
			best = parts
		}
	}
	if best[0] == 0 {
		return "", fmt.Errorf("%s imports no versioned glibc symbol", bin)
	}
	out := make([]string, len(best))
	for i, n := range best {
		out[i] = strconv.Itoa(n)
	}
	return strings.Join(out, "."), nil
}

func writePackage(pkg nfpm.Packager, info *nfpm.Info, target string) error {
	f, err := os.Create(target)
	if err != nil {
		return err
	}
	info.Target = target
	if err := pkg.Package(info, f); err != nil {
		f.Close()
		os.Remove(target)
		return err
	}
	return f.Close()
}

// changelogVersion is the upstream version and the package release of
// packaging/changelog.yml's top entry ("semver: 0.1.0-1").
func changelogVersion(path string) (version, release string, err error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return "", "", err
	}
	var entries []struct {
		Semver string `yaml:"semver"`
	}
	if err := yaml.Unmarshal(data, &entries); err != nil {
		return "", "", fmt.Errorf("%s: %w", path, err)
	}
	if len(entries) == 0 {
		return "", "", fmt.Errorf("%s: no entries", path)
	}
	m := regexp.MustCompile(`^([0-9]+\.[0-9]+\.[0-9]+)-([0-9]+)$`).FindStringSubmatch(entries[0].Semver)
	if m == nil {
		return "", "", fmt.Errorf("%s: the top entry's semver is %q; want VERSION-RELEASE, e.g. 0.1.0-1", path, entries[0].Semver)
	}
	return m[1], m[2], nil
}

// sourceDate is $SOURCE_DATE_EPOCH, else the last commit's time, else now.
func sourceDate() (time.Time, error) {
	if s := os.Getenv("SOURCE_DATE_EPOCH"); s != "" {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return time.Time{}, fmt.Errorf("SOURCE_DATE_EPOCH=%q: %w", s, err)
		}
		return time.Unix(n, 0).UTC(), nil
	}
	if out, err := exec.Command("git", "log", "-1", "--format=%ct").Output(); err == nil {
		if n, err := strconv.ParseInt(strings.TrimSpace(string(out)), 10, 64); err == nil {
			return time.Unix(n, 0).UTC(), nil
		}
	}
	return time.Now().UTC().Truncate(time.Second), nil
}

// gzipFile compresses src to dst as `gzip -9n` does (no name, no
// timestamp), which is what Debian expects of man pages and documentation.
func gzipFile(src, dst string) error {
	data, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	var buf bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&buf, gzip.BestCompression)
	if _, err := zw.Write(data); err != nil {
		return err
	}
	if err := zw.Close(); err != nil {
		return err
	}
	return os.WriteFile(dst, buf.Bytes(), 0o644)
}
