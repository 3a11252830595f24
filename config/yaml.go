package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// MaxFileBytes is the largest file either loader reads (CONFIG.md rule 1).
const MaxFileBytes = 1 << 20

// Problem is one thing wrong with a file, at a position when there is one.
// Its Error is `FILE:LINE:COL: message` (or `FILE:LINE: message`, or
// `FILE: message`), the form CONFIG.md specifies.
type Problem struct {
	File string
	Line int // 0 when unknown
	Col  int // 0 when unknown
	Msg  string
}

func (p *Problem) Error() string {
	switch {
	case p.Line > 0 && p.Col > 0:
		return fmt.Sprintf("%s:%d:%d: %s", p.File, p.Line, p.Col, p.Msg)
	case p.Line > 0:
		return fmt.Sprintf("%s:%d: %s", p.File, p.Line, p.Msg)
	default:
		return fmt.Sprintf("%s: %s", p.File, p.Msg)
	}
}

// Unwrap makes every problem an ErrInvalid.
func (p *Problem) Unwrap() error { return ErrInvalid }

// Errors is every problem found in one file, in file order. It is what the
// loaders return for a file that is invalid.
type Errors []*Problem

func (e Errors) Error() string {
	msgs := make([]string, len(e))
	for i, p := range e {
		msgs[i] = p.Error()
	}
	return strings.Join(msgs, "\n")
}

// Unwrap exposes each problem to errors.Is and errors.As.
func (e Errors) Unwrap() []error {
	out := make([]error, len(e))
	for i, p := range e {
		out[i] = p
	}
	return out
}

// ErrInvalid is wrapped by every problem in a file's content.
var ErrInvalid = errors.New("config: invalid file")

// decoder walks a parsed document and collects every problem, so a file is
// reported whole rather than one error per edit.
type decoder struct {
	file  string
	probs Errors
}

func (d *decoder) addf(n *yaml.Node, format string, args ...any) {
	p := &Problem{File: d.file, Msg: fmt.Sprintf(format, args...)}
	if n != nil {
		p.Line, p.Col = n.Line, n.Column
	}
	d.probs = append(d.probs, p)
}

var lineRE = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)

// parse turns data into the root node of its single document, or records why
// it cannot. A nil node with no problem means an empty document.
func (d *decoder) parse(data []byte) *yaml.Node {
	if len(data) > MaxFileBytes {
		d.addf(nil, "file is %d bytes, larger than the 1 MiB limit", len(data))
		return nil
	}
	if len(bytes.TrimSpace(data)) == 0 {
		d.addf(nil, "file is empty")
		return nil
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	switch err := dec.Decode(&doc); {
	case errors.Is(err, io.EOF): // only comments
		d.addf(nil, "file is empty (it holds only comments)")
		return nil
	case err != nil:
		d.syntax(err, data)
		return nil
	}
	var second yaml.Node
	switch err := dec.Decode(&second); {
	case errors.Is(err, io.EOF):
	case err != nil:
		d.syntax(err, data)
		return nil
	default:
		d.addf(&second, "a second YAML document; the file must hold exactly one")
		return nil
	}
	if len(doc.Content) == 0 {
		d.addf(nil, "file is empty")
		return nil
	}
	root := doc.Content[0]
	d.noAliases(root)
	if len(d.probs) > 0 {
		return nil
	}
	return root
}

// syntax records a parser error, keeping the line yaml.v3 puts in its text.
func (d *decoder) syntax(err error, data []byte) {
	msg := err.Error()
	m := lineRE.FindStringSubmatch(msg)
	if m == nil {
		d.addf(nil, "YAML syntax: %s", strings.TrimPrefix(msg, "yaml: "))
		return
	}
	line, _ := strconv.Atoi(m[1])
	text := "YAML syntax: " + m[2]
	col := 0
	if strings.HasPrefix(m[2], "did not find expected ',' or ") {
		// yaml.v3 counts this error's line from 0 when it has the flow
		// collection's start (an unclosed [ on line 3 is "line 2") and
		// from 1 when it does not: find the opening bracket instead.
		if l, c, ok := unclosedFlow(data); ok {
			line, col = l, c
			text = fmt.Sprintf("YAML syntax: this %c is never closed (%s)", data[lineStart(data, l)+c-1], m[2])
		}
	}
	if lines := bytes.Split(data, []byte("\n")); line >= 1 && line <= len(lines) && bytes.ContainsRune(lines[line-1], '\t') {
		text += " (a tab: YAML is indented with spaces only)"
	}
	d.probs = append(d.probs, &Problem{File: d.file, Line: line, Col: col, Msg: text})
}

// unclosedFlow finds the first [ or { of a YAML flow collection that is
// never closed: its line and column (1-based). Quoted strings and comments
// are skipped; it is used only to place an error yaml.v3 reports.
func unclosedFlow(data []byte) (line, col int, ok bool) {
	type open struct{ line, col int }
	var stack []open
	l, c := 1, 0
	var quote byte
	comment := false
	prev := byte('\n')
	for _, b := range data {
		c++
		switch {
		case b == '\n': // a quoted scalar may span lines: quote stays
			l, c, comment = l+1, 0, false
		case comment:
		case quote != 0:
			if b == quote {
				quote = 0
			}
		case b == '#' && (prev == ' ' || prev == '\t' || prev == '\n'):
			comment = true
		case b == '"' || b == '\'':
			quote = b
		case b == '[' || b == '{':
			stack = append(stack, open{l, c})
		case (b == ']' || b == '}') && len(stack) > 0:
			stack = stack[:len(stack)-1]
		}
		prev = b
	}
	if len(stack) == 0 {
		return 0, 0, false
	}
	return stack[0].line, stack[0].col, true
}

// lineStart is the offset of line (1-based) in data.
func lineStart(data []byte, line int) int {
	off := 0
	for l := 1; l < line; l++ {
		i := bytes.IndexByte(data[off:], '\n')
		if i < 0 {
			return off
		}
		off += i + 1
	}
	return off
}

// sorted returns the problems in file order; problems without a position
// (about the whole file) come first.
func (e Errors) sorted() Errors {
	slices.SortStableFunc(e, func(a, b *Problem) int {
		if a.Line != b.Line {
			return a.Line - b.Line
		}
		return a.Col - b.Col
	})
	return e
}

// noAliases rejects anchors and aliases: neither file needs them, and refusing
// them rules out alias bombs.
func (d *decoder) noAliases(n *yaml.Node) {
	if n.Kind == yaml.AliasNode {
		d.addf(n, "YAML aliases are not allowed")
		return
	}
	if n.Anchor != "" {
		d.addf(n, "YAML anchors are not allowed")
	}
	for _, c := range n.Content {
		d.noAliases(c)
	}
}

// field decodes the value of one known key.
type field func(d *decoder, path string, v *yaml.Node)

// mapping checks that n is a mapping whose keys are all known and unique, and
// decodes each value with its field. A null value (an empty section) keeps the
// defaults.
func (d *decoder) mapping(n *yaml.Node, path string, fields map[string]field) {
	if isNull(n) {
		return
	}
	if n.Kind != yaml.MappingNode {
		d.addf(n, "%s must be a mapping, got %s", describe(path), kindName(n))
		return
	}
	seen := map[string]*yaml.Node{}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		key := k.Value
		if k.Kind != yaml.ScalarNode {
			d.addf(k, "keys must be plain strings")
			continue
		}
		full := key
		if path != "" {
			full = path + "." + key
		}
		if first, dup := seen[key]; dup {
			d.addf(k, "duplicate key %q (first at line %d)", full, first.Line)
			continue
		}
		seen[key] = k
		f, ok := fields[key]
		if !ok {
			d.addf(k, "unknown key %q%s (known keys: %s)", full, inWhere(path), knownKeys(fields))
			continue
		}
		f(d, full, v)
	}
}

func inWhere(path string) string {
	if path == "" {
		return ""
	}
	return " in " + path
}

func knownKeys(fields map[string]field) string {
	keys := make([]string, 0, len(fields))
	for k := range fields {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return strings.Join(keys, ", ")
}

func describe(path string) string {
	if path == "" {
		return "the file"
	}
	return path
}

func isNull(n *yaml.Node) bool { return n.Kind == yaml.ScalarNode && n.Tag == "!!null" }

func kindName(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		switch n.Tag {
		case "!!null":
			return "nothing (null)"
		case "!!str":
			return fmt.Sprintf("the string %q", n.Value)
		case "!!int", "!!float":
			return "the number " + n.Value
		case "!!bool":
			return "the boolean " + n.Value
		}
		return fmt.Sprintf("%q", n.Value)
	}
	return "an unexpected node"
}

// scalar checks that n is a scalar of one of the tags (any tag when none is
// given) and returns its text.
func (d *decoder) scalar(n *yaml.Node, path, want string, tags ...string) (string, bool) {
	if n.Kind != yaml.ScalarNode || isNull(n) || (len(tags) > 0 && !slices.Contains(tags, n.Tag)) {
		d.addf(n, "%s must be %s, got %s", path, want, kindName(n))
		return "", false
	}
	return n.Value, true
}

func str(dst *string) field {
	return func(d *decoder, path string, n *yaml.Node) {
		if n.Kind == yaml.ScalarNode && n.Tag == "!!null" {
			*dst = ""
			return
		}
		if v, ok := d.scalar(n, path, "a string", "!!str"); ok {
			*dst = v
		}
	}
}

// text accepts a string or a number, as written: for values such as a group
// that may be a name or a numeric id.
func text(dst *string) field {
	return func(d *decoder, path string, n *yaml.Node) {
		if v, ok := d.scalar(n, path, "a string", "!!str", "!!int"); ok {
			*dst = v
		}
	}
}

func boolean(dst *bool) field {
	return func(d *decoder, path string, n *yaml.Node) {
		if v, ok := d.scalar(n, path, "true or false", "!!bool"); ok {
			*dst = v == "true" || v == "True" || v == "TRUE"
		}
	}
}

func integer(dst *int) field {
	return func(d *decoder, path string, n *yaml.Node) {
		v, ok := d.scalar(n, path, "a whole number", "!!int")
		if !ok {
			return
		}
		i, err := strconv.ParseInt(strings.ReplaceAll(v, "_", ""), 0, 64)
		if err != nil || i != int64(int(i)) {
			d.addf(n, "%s: %q is not a whole number in range", path, v)
			return
		}
		*dst = int(i)
	}
}

func number(dst *float64) field {
	return func(d *decoder, path string, n *yaml.Node) {
		v, ok := d.scalar(n, path, "a number", "!!int", "!!float")
		if !ok {
			return
		}
		f, err := strconv.ParseFloat(v, 64)
		if err != nil {
			d.addf(n, "%s: %q is not a number", path, v)
			return
		}
		*dst = f
	}
}

func duration(dst *time.Duration) field {
	return func(d *decoder, path string, n *yaml.Node) {
		v, ok := d.scalar(n, path, `a duration such as "250ms" or "1m30s"`, "!!str", "!!int")
		if !ok {
			return
		}
		if v == "0" {
			*dst = 0
			return
		}
		dur, err := time.ParseDuration(v)
		if err != nil {
			d.addf(n, "%s: %q is not a duration (use Go syntax with a unit, such as 250ms, 5s or 1m30s)", path, v)
			return
		}
		*dst = dur
	}
}

// fileMode reads a permission mode written in octal, quoted ("0660") or not.
func fileMode(dst *uint32) field {
	return func(d *decoder, path string, n *yaml.Node) {
		v, ok := d.scalar(n, path, `an octal mode such as "0660"`, "!!str", "!!int")
		if !ok {
			return
		}
		m, err := strconv.ParseUint(strings.TrimPrefix(v, "0o"), 8, 32)
		if err != nil || m > 0o777 {
			d.addf(n, "%s: %q is not an octal permission mode between 0000 and 0777", path, v)
			return
		}
		*dst = uint32(m)
	}
}

func stringList(dst *[]string) field {
	return func(d *decoder, path string, n *yaml.Node) {
		items := d.list(n, path)
		out := make([]string, 0, len(items))
		for _, it := range items {
			if v, ok := d.scalar(it, path+" entries", "strings", "!!str"); ok {
				out = append(out, v)
			}
		}
		*dst = out
	}
}

func intList(dst *[]int) field {
	return func(d *decoder, path string, n *yaml.Node) {
		items := d.list(n, path)
		out := make([]int, 0, len(items))
		for _, it := range items {
			var i int
			before := len(d.probs)
			integer(&i)(d, path+" entries", it)
			if len(d.probs) == before {
				out = append(out, i)
			}
		}
		*dst = out
	}
}

func (d *decoder) list(n *yaml.Node, path string) []*yaml.Node {
	if isNull(n) {
		return nil
	}
	if n.Kind != yaml.SequenceNode {
		d.addf(n, "%s must be a list, got %s", path, kindName(n))
		return nil
	}
	return n.Content
}
