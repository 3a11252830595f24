package server

import (
	"os"
	"regexp"
	"strings"
	"testing"

	"udp_iaasd/api"
)

// docs/api.md is the reference a newcomer reads: every route the server
// routes, every query parameter it accepts and every error code it can
// answer is named there, so that none is added without its page.
func TestAPIReferenceNamesEverything(t *testing.T) {
	doc, err := os.ReadFile("../docs/api.md")
	if err != nil {
		t.Fatal(err)
	}
	text := string(doc)
	for _, route := range []string{kvPrefix, watchPrefix, lockPrefix, electionPrefix, "/v1/txn", "/healthz", "/readyz",
		"/v1/status", "/metrics"} {
		if !strings.Contains(text, route) {
			t.Errorf("docs/api.md does not name the route %s", route)
		}
	}
	for _, code := range api.Codes {
		if !strings.Contains(text, "`"+code+"`") {
			t.Errorf("docs/api.md does not name the error code %s", code)
		}
	}
	// The parameters every handler accepts, read from the handlers
	// themselves: the string arguments of their parseParams calls.
	call := regexp.MustCompile(`(?:keyRequest|keyParams|holdRequest|parseParams)\((?:r|rawKey|rawName|[^"()]*?), ?([^)]*)\)`)
	quoted := regexp.MustCompile(`"([a-z_]+)"`)
	files, _ := os.ReadDir(".")
	params := map[string]bool{}
	for _, f := range files {
		name := f.Name()
		if !strings.HasSuffix(name, ".go") || strings.HasSuffix(name, "_test.go") {
			continue
		}
		src, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range call.FindAllStringSubmatch(string(src), -1) {
			for _, q := range quoted.FindAllStringSubmatch(m[1], -1) {
				params[q[1]] = true
			}
		}
	}
	if len(params) < 10 {
		t.Fatalf("found only %d parameters in the handlers (%v): the pattern no longer matches them", len(params), params)
	}
	for p := range params {
		if !regexp.MustCompile("`" + p + "(=[^`]*)?`").MatchString(text) {
			t.Errorf("docs/api.md does not name the query parameter %s", p)
		}
	}
}
