package render_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"udp_iaasd/render"
)

// Every bad render file and template is refused with its position: the
// file's own problems at FILE:LINE:COL, a template that does not parse at
// the template's line (and column where text/template gives one).
func TestLoadErrors(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	good := write("good.tmpl", "{{key \"a\"}}\n")
	syntax := write("syntax.tmpl", "line one\n{{if}}\n")
	unknown := write("unknown.tmpl", "ok\n\n{{nosuchfunc \"a\"}}\n")
	for _, tc := range []struct {
		name, file string
		want       []string
	}{
		{"unknown key", "templates:\n  - {source: " + good + ", destination: /tmp/x, colour: red}\n",
			[]string{`unknown key "templates[0].colour" in templates[0]`}},
		{"duplicate destination", "templates:\n  - {source: " + good + ", destination: /tmp/x}\n  - {source: " + good + ", destination: /tmp/./x}\n",
			[]string{`render.yaml:3:`, `also templates[0]'s destination`}},
		{"relative paths", "templates:\n  - {source: a.tmpl, destination: x.conf}\n",
			[]string{`render.yaml:2:14: templates[0].source: "a.tmpl" is relative`, `templates[0].destination: "x.conf" is relative`}},
		{"unknown owner", "templates:\n  - {source: " + good + ", destination: /tmp/x, owner: no-such-user-endpointd, group: no-such-group-endpointd}\n",
			[]string{`unknown user "no-such-user-endpointd"`, `unknown group "no-such-group-endpointd"`}},
		{"wait", "templates:\n  - source: " + good + "\n    destination: /tmp/x\n    wait: {min: 2s, max: 1s}\n",
			[]string{`render.yaml:4:26: templates[0].wait.max: max (1s) is below min (2s)`}},
		{"no templates", "socket: /run/x.sock\n", []string{"no templates"}},
		{"syntax", "templates:\n  - {source: " + syntax + ", destination: /tmp/x}\n",
			[]string{"render.yaml:2:14: templates[0].source: " + syntax + ":2: missing value for if"}},
		{"unknown function", "templates:\n  - {source: " + unknown + ", destination: /tmp/x}\n",
			[]string{unknown + `:3: function "nosuchfunc" not defined`}},
		{"missing template", "templates:\n  - {source: " + filepath.Join(dir, "absent.tmpl") + ", destination: /tmp/x}\n",
			[]string{"absent.tmpl: no such file"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := render.Load(write("render.yaml", tc.file))
			if err == nil {
				t.Fatal("accepted")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error\n%v\ndoes not say %q", err, w)
				}
			}
		})
	}
}
