package main

import (
	"bytes"
	"flag"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite the generated man page and completions under packaging/")

// generatedDocs are the files packaging ships, each with the command line
// that writes it.
var generatedDocs = []struct {
	path string
	args []string
}{
	{"../../packaging/endpointd.1", []string{"man"}},
	{"../../packaging/completions/endpointd.bash", []string{"completion", "bash"}},
	{"../../packaging/completions/_endpointd", []string{"completion", "zsh"}},
}

// The shipped man page and completions are what the CLI's own flag
// definitions generate. After changing a flag or a command:
//
//	go test ./cmd/endpointd -run TestGeneratedDocs -update
func TestGeneratedDocs(t *testing.T) {
	for _, g := range generatedDocs {
		t.Run(strings.Join(g.args, "_"), func(t *testing.T) {
			code, out, errOut := invoke(t, "", g.args...)
			if code != exitOK || errOut != "" {
				t.Fatalf("exit %d, stderr %q", code, errOut)
			}
			if *update {
				if err := os.WriteFile(g.path, []byte(out), 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			shipped, err := os.ReadFile(g.path)
			if err != nil {
				t.Fatalf("%v (write it with: go test ./cmd/endpointd -run TestGeneratedDocs -update)", err)
			}
			if string(shipped) != out {
				t.Fatalf("%s is not what endpointd %s writes; regenerate it with: go test ./cmd/endpointd -run TestGeneratedDocs -update",
					g.path, strings.Join(g.args, " "))
			}
		})
	}
}

// Every command the docs list is one run dispatches, and every flag the docs
// give it is one it accepts.
func TestCommandsTableMatchesDispatch(t *testing.T) {
	for _, c := range commands {
		if c.flags == nil || c.name == "dev" { // a nodev build refuses dev before parsing flags
			continue
		}
		words := strings.Fields(c.name)
		c.flagSet().VisitAll(func(f *flag.Flag) {
			// -h after a valid flag exits 0 with usage; an unknown flag
			// exits 2 before it.
			value := f.DefValue
			if flagArg(f) == "" {
				value = "false"
			}
			line := append(append([]string(nil), words...), "-"+f.Name+"="+value, "-h")
			if code, _, errOut := invoke(t, "", line...); code != exitOK {
				t.Errorf("endpointd %s: exit %d, stderr %q", strings.Join(line, " "), code, errOut)
			}
		})
	}
	for _, word := range []string{"completion", "man"} {
		if code, _, errOut := invoke(t, "", word, "no-such-argument"); code != exitUsage || strings.Contains(errOut, "unknown command") {
			t.Errorf("endpointd %s: exit %d, stderr %q", word, code, errOut)
		}
	}
}

// The bash completion, run by bash as it runs on a Tab.
func TestBashCompletion(t *testing.T) {
	bash, err := exec.LookPath("bash")
	if err != nil {
		t.Skip("no bash on this machine")
	}
	var script bytes.Buffer
	writeBashCompletion(&script)
	dir := t.TempDir()
	scriptPath := filepath.Join(dir, "endpointd.bash")
	os.WriteFile(scriptPath, script.Bytes(), 0o644)
	os.WriteFile(filepath.Join(dir, "config.yaml"), nil, 0o644)
	os.WriteFile(filepath.Join(dir, "endpoints.yaml"), nil, 0o644)

	for _, tc := range []struct {
		line []string // the words on the line; the last is being completed
		want []string // all of these among the candidates
		not  []string // none of these
	}{
		{[]string{"endpointd", ""}, []string{"run", "validate", "kv", "lock", "elect", "status", "completion", "man"}, nil},
		{[]string{"endpointd", "v"}, []string{"validate", "version"}, []string{"run"}},
		{[]string{"endpointd", "kv", "p"}, []string{"put"}, []string{"get"}},
		{[]string{"endpointd", "kv", "put", "-if-"}, []string{"-if-absent", "-if-exists", "-if-revision"}, []string{"-prefix"}},
		{[]string{"endpointd", "kv", "del", "k", "-"}, []string{"-prefix", "-if-revision", "-socket"}, []string{"-ttl"}},
		{[]string{"endpointd", "run", "-"}, []string{"-config"}, []string{"-socket"}},
		{[]string{"endpointd", "run", "-config", dir + "/con"}, []string{dir + "/config.yaml"}, nil},
		{[]string{"endpointd", "kv", "put", "-ttl", ""}, nil, []string{"-ttl", dir + "/config.yaml"}},
		{[]string{"endpointd", "validate", dir + "/end"}, []string{dir + "/endpoints.yaml"}, nil},
		{[]string{"endpointd", "elect", "-"}, []string{"-observe", "-ttl"}, []string{"-wait"}},
		{[]string{"endpointd", "lock", "-"}, []string{"-wait", "-grace"}, []string{"-observe"}},
		{[]string{"endpointd", "lock", "job", "--", "bas"}, []string{"bash"}, nil},
		{[]string{"endpointd", "completion", ""}, []string{"bash", "zsh"}, nil},
	} {
		t.Run(strings.Join(tc.line, " "), func(t *testing.T) {
			var words strings.Builder
			for _, w := range tc.line {
				words.WriteString(" '" + w + "'")
			}
			prog := "source '" + scriptPath + "'\nCOMP_WORDS=(" + words.String() + ")\nCOMP_CWORD=" +
				strconv.Itoa(len(tc.line)-1) + "\n_endpointd\nprintf '%s\\n' \"${COMPREPLY[@]}\"\n"
			out, err := exec.Command(bash, "--norc", "--noprofile", "-c", prog).CombinedOutput()
			if err != nil {
				t.Fatalf("bash: %v\n%s", err, out)
			}
			got := map[string]bool{}
			for _, w := range strings.Split(strings.TrimSpace(string(out)), "\n") {
				got[w] = true
			}
			for _, w := range tc.want {
				if !got[w] {
					t.Errorf("missing %q among %q", w, out)
				}
			}
			for _, w := range tc.not {
				if got[w] {
					t.Errorf("unexpected %q among %q", w, out)
				}
			}
		})
	}
}

// The zsh completion parses; zsh's own completion system loads it.
func TestZshCompletion(t *testing.T) {
	zsh, err := exec.LookPath("zsh")
	if err != nil {
		t.Skip("no zsh on this machine (.ci/run installs it)")
	}
	var script bytes.Buffer
	writeZshCompletion(&script)
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "_endpointd"), script.Bytes(), 0o644)
	if out, err := exec.Command(zsh, "-n", filepath.Join(dir, "_endpointd")).CombinedOutput(); err != nil {
		t.Fatalf("zsh -n: %v\n%s", err, out)
	}
	// compinit finds it by its #compdef line and binds it to endpointd.
	prog := "fpath=('" + dir + "' $fpath); autoload -Uz compinit; compinit -u -d '" + dir + "/zcompdump'; print -r -- $_comps[endpointd]"
	out, err := exec.Command(zsh, "-f", "-c", prog).CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "_endpointd" {
		t.Fatalf("compinit: %v; endpointd completes with %q, want _endpointd", err, out)
	}
}
