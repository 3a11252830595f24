// Package endpoint parses, validates and normalizes etcd endpoint strings.
//
// It is the one place that knows what an endpoint may look like (CONFIG.md,
// rules 2–5): the etcd client package, the config loader and the command line
// all call it, so an entry accepted by one is accepted by all. It does not
// resolve names or contact anything.
package endpoint

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
)

// Kinds of problems, for errors.Is. Every *Error wraps exactly one of them.
var (
	ErrInvalid   = errors.New("endpoint: invalid endpoint")
	ErrDuplicate = errors.New("endpoint: duplicate endpoint")
	ErrMixedTLS  = errors.New("endpoint: TLS and plain endpoints mixed")
	ErrTooFew    = errors.New("endpoint: too few endpoints")
)

// Error describes one problem with one entry of a list (Index >= 0) or with the
// list as a whole (Index == -1). Its message is the one operators see after
// `FILE:LINE:COL:`, e.g. `endpoint "10.0.0.1:99999": port out of range 1-65535`.
type Error struct {
	Index  int    // position in the list, -1 for the whole list
	Entry  string // the entry as written; "" for the whole list
	Kind   error  // one of ErrInvalid, ErrDuplicate, ErrMixedTLS, ErrTooFew
	Reason string // what is wrong, for a person
}

func (e *Error) Error() string {
	if e.Index < 0 {
		return e.Reason
	}
	return fmt.Sprintf("endpoint %q: %s", e.Entry, e.Reason)
}

func (e *Error) Unwrap() error { return e.Kind }

// Endpoint is one parsed endpoint.
type Endpoint struct {
	Scheme string // http, https, unix or unixs
	Host   string // lower-cased DNS name or canonical IP (no brackets); "" for unix
	Port   int    // 0 for unix
	Path   string // absolute socket path for unix; "" otherwise
}

// TLS reports whether the endpoint is dialled with TLS.
func (e Endpoint) TLS() bool { return e.Scheme == "https" || e.Scheme == "unixs" }

// String returns the normalized form: scheme://host:port, or unix:///path.
func (e Endpoint) String() string {
	if e.Path != "" {
		return e.Scheme + "://" + e.Path
	}
	return e.Scheme + "://" + net.JoinHostPort(e.Host, strconv.Itoa(e.Port))
}

// Parse parses one entry. A bare host:port gets https when defaultTLS is set
// (etcd.tls is configured), else http. The returned error is an *Error with
// Index 0.
func Parse(raw string, defaultTLS bool) (Endpoint, error) {
	ep, reason := parse(raw, defaultTLS)
	if reason != "" {
		return Endpoint{}, &Error{Index: 0, Entry: raw, Kind: ErrInvalid, Reason: reason}
	}
	return ep, nil
}

// ParseList parses a whole list and checks it as a set: every entry valid, no
// two entries with the same normalized form, TLS and plain not mixed, and at
// least minSize entries. It reports every problem, not just the first: the
// error is an errors.Join of *Error values (see Errors). A list with any
// problem returns no endpoints.
func ParseList(raws []string, defaultTLS bool, minSize int) ([]Endpoint, error) {
	var (
		eps    = make([]Endpoint, 0, len(raws))
		errs   []error
		seen   = make(map[string]int, len(raws))
		tlsIdx = -1 // first TLS entry
		plnIdx = -1 // first plain entry
	)
	for i, raw := range raws {
		ep, reason := parse(raw, defaultTLS)
		if reason != "" {
			errs = append(errs, &Error{Index: i, Entry: raw, Kind: ErrInvalid, Reason: reason})
			continue
		}
		norm := ep.String()
		if j, dup := seen[norm]; dup {
			errs = append(errs, &Error{Index: i, Entry: raw, Kind: ErrDuplicate,
				Reason: fmt.Sprintf("duplicate of entry %d (%q), both are %s", j+1, raws[j], norm)})
			continue
		}
		seen[norm] = i
		switch {
		case ep.TLS() && tlsIdx < 0:
			tlsIdx = i
		case !ep.TLS() && plnIdx < 0:
			plnIdx = i
		}
		if tlsIdx >= 0 && plnIdx >= 0 && (i == tlsIdx || i == plnIdx) {
			first := min(tlsIdx, plnIdx)
			errs = append(errs, &Error{Index: i, Entry: raw, Kind: ErrMixedTLS,
				Reason: fmt.Sprintf("is %s but entry %d (%q) is %s: TLS and plain endpoints cannot be mixed",
					tlsWord(ep.TLS()), first+1, raws[first], tlsWord(!ep.TLS()))})
		}
		eps = append(eps, ep)
	}
	if len(raws) < minSize {
		errs = append(errs, &Error{Index: -1, Kind: ErrTooFew,
			Reason: fmt.Sprintf("%d endpoint%s, fewer than min_cluster_size %d", len(raws), plural(len(raws)), minSize)})
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	return eps, nil
}

// Errors flattens an error returned by ParseList (or Parse), possibly wrapped
// with %w, into its *Error values, in list order. Other errors are ignored.
func Errors(err error) []*Error {
	switch e := err.(type) {
	case nil:
		return nil
	case *Error:
		return []*Error{e}
	case interface{ Unwrap() []error }:
		var out []*Error
		for _, inner := range e.Unwrap() {
			out = append(out, Errors(inner)...)
		}
		return out
	default:
		return Errors(errors.Unwrap(err))
	}
}

// Strings returns the normalized forms of eps.
func Strings(eps []Endpoint) []string {
	out := make([]string, len(eps))
	for i, ep := range eps {
		out[i] = ep.String()
	}
	return out
}

func tlsWord(tls bool) string {
	if tls {
		return "TLS"
	}
	return "plain"
}

func plural(n int) string {
	if n == 1 {
		return ""
	}
	return "s"
}

// parse returns the endpoint or a reason it is invalid.
func parse(raw string, defaultTLS bool) (Endpoint, string) {
	if raw == "" {
		return Endpoint{}, "empty endpoint"
	}
	if strings.TrimSpace(raw) != raw {
		return Endpoint{}, "leading or trailing white space"
	}
	for _, r := range raw {
		if r <= ' ' || r == 0x7f {
			return Endpoint{}, "contains white space or a control character"
		}
	}
	scheme, rest, hasScheme := strings.Cut(raw, "://")
	if !hasScheme {
		if strings.Contains(raw, "/") {
			return Endpoint{}, "want host:port or scheme://host:port"
		}
		scheme, rest = "http", raw
		if defaultTLS {
			scheme = "https"
		}
	}
	scheme = strings.ToLower(scheme)
	switch scheme {
	case "unix", "unixs":
		return parseUnix(scheme, rest)
	case "http", "https":
	default:
		return Endpoint{}, fmt.Sprintf("unsupported scheme %q (want http, https, unix or unixs)", scheme)
	}
	switch {
	case strings.Contains(rest, "@"):
		return Endpoint{}, "user info is not allowed"
	case strings.Contains(rest, "?"):
		return Endpoint{}, "a query is not allowed"
	case strings.Contains(rest, "#"):
		return Endpoint{}, "a fragment is not allowed"
	case strings.Contains(rest, "/"):
		return Endpoint{}, "a path is not allowed"
	}
	hostport := rest
	host, portStr, err := net.SplitHostPort(hostport)
	if err != nil {
		var ae *net.AddrError
		switch {
		case errors.As(err, &ae) && ae.Err == "missing port in address":
			return Endpoint{}, "missing port (want host:port)"
		case errors.As(err, &ae) && ae.Err == "too many colons in address":
			return Endpoint{}, "an IPv6 address must be in brackets, as [::1]:2379"
		default:
			return Endpoint{}, "want host:port"
		}
	}
	port, reason := parsePort(portStr)
	if reason != "" {
		return Endpoint{}, reason
	}
	bracketed := strings.HasPrefix(hostport, "[")
	h, reason := parseHost(host, bracketed)
	if reason != "" {
		return Endpoint{}, reason
	}
	return Endpoint{Scheme: scheme, Host: h, Port: port}, ""
}

func parseUnix(scheme, rest string) (Endpoint, string) {
	switch {
	case !strings.HasPrefix(rest, "/"):
		return Endpoint{}, fmt.Sprintf("want %s:///absolute/path", scheme)
	case rest == "/" || strings.HasSuffix(rest, "/"):
		return Endpoint{}, "unix socket path must name a file, not a directory"
	case strings.ContainsAny(rest, "?#"):
		return Endpoint{}, "a query or fragment is not allowed"
	}
	return Endpoint{Scheme: scheme, Path: rest}, ""
}

func parsePort(s string) (int, string) {
	if s == "" {
		return 0, "missing port (want host:port)"
	}
	for _, r := range s {
		if r < '0' || r > '9' {
			return 0, fmt.Sprintf("port %q is not a number", s)
		}
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 || n > 65535 {
		return 0, "port out of range 1-65535"
	}
	return n, ""
}

func parseHost(host string, bracketed bool) (string, string) {
	if host == "" {
		return "", "missing host"
	}
	if bracketed {
		if strings.Contains(host, "%") {
			return "", "IPv6 zones are not supported"
		}
		addr, err := netip.ParseAddr(host)
		if err != nil || !addr.Is6() || addr.Is4In6() {
			return "", fmt.Sprintf("%q in brackets is not an IPv6 address", host)
		}
		return addr.String(), ""
	}
	if looksNumeric(host) {
		addr, err := netip.ParseAddr(host)
		if err != nil || !addr.Is4() {
			return "", fmt.Sprintf("%q is not a valid IPv4 address", host)
		}
		return addr.String(), ""
	}
	if reason := checkDNSName(host); reason != "" {
		return "", reason
	}
	return strings.ToLower(host), ""
}

// looksNumeric reports whether host is made of digits and dots only; such a
// host must be an IPv4 address, never a DNS name.
func looksNumeric(host string) bool {
	for _, r := range host {
		if (r < '0' || r > '9') && r != '.' {
			return false
		}
	}
	return true
}

func checkDNSName(host string) string {
	if len(host) > 253 {
		return fmt.Sprintf("host name is %d characters, longer than 253", len(host))
	}
	for label := range strings.SplitSeq(host, ".") {
		switch {
		case label == "":
			return fmt.Sprintf("host %q has an empty label", host)
		case len(label) > 63:
			return fmt.Sprintf("host %q has a label longer than 63 characters", host)
		case label[0] == '-' || label[len(label)-1] == '-':
			return fmt.Sprintf("host %q has a label that starts or ends with a hyphen", host)
		}
		for _, r := range label {
			if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-') {
				return fmt.Sprintf("host %q: %q is not allowed in a host name (letters, digits, hyphens and dots)", host, r)
			}
		}
	}
	return ""
}
