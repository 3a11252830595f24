package config

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// DefaultRenderPath is where `endpointd render` reads its file without
// -config (CONFIG.md "Render files"); the packaged unit passes
// /etc/endpointd/render/NAME.yaml.
const DefaultRenderPath = "/etc/endpointd/render.yaml"

// Render is a render file: which templates `endpointd render` keeps
// rendered, and where.
type Render struct {
	// Socket is the agent's socket ("" = as the CLI finds it).
	Socket string
	// StateDir keeps, per destination, the revision last written there.
	StateDir  string
	Templates []RenderTemplate

	file string
	pos  map[string]*yaml.Node
}

// RenderTemplate is one template and its destination.
type RenderTemplate struct {
	Source      string
	Destination string
	Mode        uint32
	// Owner and Group are names or numeric ids ("" = the renderer's own);
	// UID and GID are what they resolve to (-1 = unchanged).
	Owner, Group string
	UID, GID     int
	// Check and Reload are argv lists; %s in an argument is the candidate
	// file (Check) or the destination (Reload).
	Check        []string
	CheckTimeout time.Duration
	Reload       []string
	// WaitMin and WaitMax are the quiet period after a change.
	WaitMin, WaitMax time.Duration
	// StaleIfError lets a render at start, with etcd away, come from the
	// agent's copy confirmed at most this long ago (0: wait for etcd).
	StaleIfError time.Duration
}

// Pos is where path ("templates[1].source") is in the file, for messages
// about it made outside this package (a template that does not parse).
func (r *Render) Pos(path string) (line, col int) {
	if n := r.pos[path]; n != nil {
		return n.Line, n.Column
	}
	return 0, 0
}

// File is the path the render file was read from.
func (r *Render) File() string { return r.file }

// LoadRender reads and validates a render file.
func LoadRender(path string) (*Render, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	return ParseRender(path, data)
}

// ParseRender decodes and validates a render file. Every problem comes back
// at once, each as FILE:LINE:COL: message.
func ParseRender(file string, data []byte) (*Render, error) {
	r := &Render{StateDir: "/var/lib/endpointd/render", file: file, pos: map[string]*yaml.Node{}}
	d := &decoder{file: file}
	root := d.parse(data)
	if root == nil {
		return nil, d.probs.sorted()
	}
	at := func(f field) field {
		return func(d *decoder, path string, n *yaml.Node) {
			r.pos[path] = n
			f(d, path, n)
		}
	}
	d.mapping(root, "", map[string]field{
		"socket":    at(str(&r.Socket)),
		"state_dir": at(str(&r.StateDir)),
		"templates": at(func(d *decoder, path string, n *yaml.Node) {
			items := d.list(n, path)
			r.Templates = make([]RenderTemplate, len(items))
			for i, it := range items {
				t := &r.Templates[i]
				t.Mode, t.CheckTimeout, t.UID, t.GID = 0o644, 30*time.Second, -1, -1
				p := fmt.Sprintf("templates[%d]", i)
				r.pos[p] = it
				if it.Kind != yaml.MappingNode {
					d.addf(it, "%s must be a mapping (source, destination, …), got %s", p, kindName(it))
					continue
				}
				d.mapping(it, p, map[string]field{
					"source":        at(str(&t.Source)),
					"destination":   at(str(&t.Destination)),
					"mode":          at(fileMode(&t.Mode)),
					"owner":         at(ownerName(&t.Owner)),
					"group":         at(ownerName(&t.Group)),
					"check":         at(stringList(&t.Check)),
					"check_timeout": at(duration(&t.CheckTimeout)),
					"reload":        at(stringList(&t.Reload)),
					"wait": at(func(d *decoder, path string, n *yaml.Node) {
						d.mapping(n, path, map[string]field{
							"min": at(duration(&t.WaitMin)),
							"max": at(duration(&t.WaitMax)),
						})
					}),
					"stale_if_error": at(duration(&t.StaleIfError)),
				})
			}
		}),
	})
	probs := append(Errors{}, d.probs...)
	v := &checks{c: &Config{file: file, pos: r.pos}}
	r.validate(v)
	probs = append(probs, v.probs...)
	if len(probs) > 0 {
		return nil, probs.sorted()
	}
	return r, nil
}

// ownerName reads a user or group: a name, or a numeric id.
func ownerName(dst *string) field {
	return func(d *decoder, path string, n *yaml.Node) {
		if v, ok := d.scalar(n, path, "a name or a numeric id", "!!str", "!!int"); ok {
			*dst = v
		}
	}
}

func (r *Render) validate(v *checks) {
	if r.Socket != "" && !filepath.IsAbs(r.Socket) {
		v.bad("socket", "%q is relative; give the agent socket's absolute path, or \"\" for the default", r.Socket)
	}
	if !filepath.IsAbs(r.StateDir) {
		v.bad("state_dir", "%q is relative; give an absolute directory", r.StateDir)
	}
	if len(r.Templates) == 0 {
		v.bad("templates", "no templates: list at least one (source, destination)")
	}
	first := map[string]int{}
	for i := range r.Templates {
		t := &r.Templates[i]
		p := fmt.Sprintf("templates[%d]", i)
		switch {
		case t.Source == "":
			v.bad(p, "every template needs a source (the template file)")
		case !filepath.IsAbs(t.Source):
			v.bad(p+".source", "%q is relative; give an absolute path", t.Source)
		}
		switch j, dup := first[filepath.Clean(t.Destination)]; {
		case t.Destination == "":
			v.bad(p, "every template needs a destination (the file it writes)")
		case !filepath.IsAbs(t.Destination):
			v.bad(p+".destination", "%q is relative; give an absolute path", t.Destination)
		case dup:
			v.bad(p+".destination", "%q is also templates[%d]'s destination; each file has one template", t.Destination, j)
		default:
			first[filepath.Clean(t.Destination)] = i
		}
		if t.Owner != "" {
			id, err := lookupUserOrID(t.Owner)
			if err != nil {
				v.bad(p+".owner", "%v", err)
			}
			t.UID = id
		}
		if t.Group != "" {
			id, err := lookupGroupOrID(t.Group)
			if err != nil {
				v.bad(p+".group", "%v", err)
			}
			t.GID = id
		}
		v.positive(p+".check_timeout", t.CheckTimeout)
		v.notNegative(p+".wait.min", t.WaitMin)
		v.notNegative(p+".wait.max", t.WaitMax)
		if t.WaitMax < t.WaitMin {
			v.bad(p+".wait.max", "max (%s) is below min (%s): a change is rendered at the latest max after it", t.WaitMax, t.WaitMin)
		}
		v.notNegative(p+".stale_if_error", t.StaleIfError)
		for _, argv := range []struct {
			name string
			list []string
		}{{"check", t.Check}, {"reload", t.Reload}} {
			if len(argv.list) > 0 && strings.TrimSpace(argv.list[0]) == "" {
				v.bad(p+"."+argv.name, "the command (its first entry) is empty")
			}
		}
	}
}

func lookupUserOrID(s string) (int, error) {
	var id int
	if _, err := fmt.Sscanf(s, "%d", &id); err == nil && fmt.Sprint(id) == s {
		return id, nil
	}
	uid, err := lookupUser(s)
	return int(uid), err
}

func lookupGroupOrID(s string) (int, error) {
	var id int
	if _, err := fmt.Sscanf(s, "%d", &id); err == nil && fmt.Sprint(id) == s {
		return id, nil
	}
	gid, err := lookupGroup(s)
	return int(gid), err
}
