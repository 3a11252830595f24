package endpoint

import (
	"errors"
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	tests := []struct {
		raw        string
		defaultTLS bool
		want       string // normalized; "" when an error is expected
		wantErr    string // substring of the reason
	}{
		// Forms etcd's own --endpoints accepts.
		{raw: "127.0.0.1:2379", want: "http://127.0.0.1:2379"},
		{raw: "127.0.0.1:2379", defaultTLS: true, want: "https://127.0.0.1:2379"},
		{raw: "http://10.0.0.1:2379", want: "http://10.0.0.1:2379"},
		{raw: "HTTPS://ETCD-1.Example.Internal:2379", want: "https://etcd-1.example.internal:2379"},
		{raw: "node1:2379", want: "http://node1:2379"},
		{raw: "localhost:1", want: "http://localhost:1"},
		{raw: "[::1]:2379", want: "http://[::1]:2379"},
		{raw: "https://[2001:DB8:0:0::1]:2379", want: "https://[2001:db8::1]:2379"},
		{raw: "unix:///run/etcd.sock", want: "unix:///run/etcd.sock"},
		{raw: "UNIXS:///run/etcd.sock", want: "unixs:///run/etcd.sock"},
		{raw: "h:02379", want: "http://h:2379"},
		{raw: "a-b.c-d.e:65535", want: "http://a-b.c-d.e:65535"},
		{raw: strings.Repeat("a", 63) + ".io:1", want: "http://" + strings.Repeat("a", 63) + ".io:1"},

		// Forms it rejects, or that cannot mean one etcd member.
		{raw: "", wantErr: "empty endpoint"},
		{raw: " 127.0.0.1:2379", wantErr: "white space"},
		{raw: "a b:1", wantErr: "white space"},
		{raw: "10.0.0.1:99999", wantErr: "port out of range 1-65535"},
		{raw: "10.0.0.1:0", wantErr: "port out of range 1-65535"},
		{raw: "10.0.0.1:-1", wantErr: "not a number"},
		{raw: "10.0.0.1:http", wantErr: "not a number"},
		{raw: "10.0.0.1", wantErr: "missing port"},
		{raw: "10.0.0.1:", wantErr: "missing port"},
		{raw: "http://10.0.0.1", wantErr: "missing port"},
		{raw: ":2379", wantErr: "missing host"},
		{raw: "::1:2379", wantErr: "must be in brackets"},
		{raw: "[10.0.0.1]:2379", wantErr: "not an IPv6 address"},
		{raw: "[fe80::1%eth0]:2379", wantErr: "zones"},
		{raw: "256.0.0.1:2379", wantErr: "not a valid IPv4"},
		{raw: "1.2.3:2379", wantErr: "not a valid IPv4"},
		{raw: "010.0.0.1:2379", wantErr: "not a valid IPv4"},
		{raw: "ftp://h:1", wantErr: `unsupported scheme "ftp"`},
		{raw: "http://h:1/v3", wantErr: "path is not allowed"},
		{raw: "http://h:1?x=1", wantErr: "query is not allowed"},
		{raw: "http://h:1#f", wantErr: "fragment is not allowed"},
		{raw: "http://user:pw@h:1", wantErr: "user info"},
		{raw: "h/x:1", wantErr: "want host:port"},
		{raw: "-bad.example:1", wantErr: "hyphen"},
		{raw: "a..b:1", wantErr: "empty label"},
		{raw: "example.com.:1", wantErr: "empty label"},
		{raw: "a_b:1", wantErr: `'_' is not allowed`},
		{raw: strings.Repeat("a", 64) + ".io:1", wantErr: "longer than 63"},
		{raw: strings.Repeat("abcdefg.", 32) + "io:1", wantErr: "longer than 253"},
		{raw: "unix://relative/path", wantErr: "unix:///absolute/path"},
		{raw: "unix:///", wantErr: "not a directory"},
		{raw: "unix:///run/x?y", wantErr: "query"},
	}
	for _, tt := range tests {
		t.Run(tt.raw, func(t *testing.T) {
			ep, err := Parse(tt.raw, tt.defaultTLS)
			if tt.wantErr != "" {
				if err == nil {
					t.Fatalf("Parse(%q) = %v, want error containing %q", tt.raw, ep, tt.wantErr)
				}
				if !strings.Contains(err.Error(), tt.wantErr) || !errors.Is(err, ErrInvalid) {
					t.Fatalf("Parse(%q) error = %q, want ErrInvalid containing %q", tt.raw, err, tt.wantErr)
				}
				if !strings.HasPrefix(err.Error(), `endpoint "`) {
					t.Fatalf("error %q does not name the entry", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("Parse(%q): %v", tt.raw, err)
			}
			if got := ep.String(); got != tt.want {
				t.Fatalf("Parse(%q) = %q, want %q", tt.raw, got, tt.want)
			}
			// Normalization is idempotent.
			again, err := Parse(ep.String(), tt.defaultTLS)
			if err != nil || again != ep {
				t.Fatalf("re-parse of %q = %v, %v; want %v", ep.String(), again, err, ep)
			}
		})
	}
}

func TestParseList(t *testing.T) {
	tests := []struct {
		name       string
		raws       []string
		defaultTLS bool
		min        int
		want       []string
		wantErrs   []string // one per reported problem, in order: "index:kind-substring"
		wantKinds  []error
	}{
		{
			name: "valid three",
			raws: []string{"10.0.0.1:2379", "http://10.0.0.2:2379", "node3:2379"},
			min:  3,
			want: []string{"http://10.0.0.1:2379", "http://10.0.0.2:2379", "http://node3:2379"},
		},
		{
			name:      "duplicate after normalization",
			raws:      []string{"10.0.0.1:2379", "HTTP://10.0.0.1:2379"},
			min:       1,
			wantErrs:  []string{`duplicate of entry 1 ("10.0.0.1:2379")`},
			wantKinds: []error{ErrDuplicate},
		},
		{
			name:      "plain bare entry mixed with https",
			raws:      []string{"10.0.0.1:2379", "https://10.0.0.2:2379"},
			min:       1,
			wantErrs:  []string{"TLS and plain endpoints cannot be mixed"},
			wantKinds: []error{ErrMixedTLS},
		},
		{
			name:       "bare entries follow the TLS default",
			raws:       []string{"10.0.0.1:2379", "https://10.0.0.2:2379", "unixs:///run/e.sock"},
			defaultTLS: true,
			min:        1,
			want:       []string{"https://10.0.0.1:2379", "https://10.0.0.2:2379", "unixs:///run/e.sock"},
		},
		{
			name:      "too few",
			raws:      []string{"10.0.0.1:2379", "10.0.0.2:2379"},
			min:       3,
			wantErrs:  []string{"2 endpoints, fewer than min_cluster_size 3"},
			wantKinds: []error{ErrTooFew},
		},
		{
			name:      "empty list",
			raws:      nil,
			min:       1,
			wantErrs:  []string{"0 endpoints, fewer than min_cluster_size 1"},
			wantKinds: []error{ErrTooFew},
		},
		{
			name:      "every problem reported",
			raws:      []string{"10.0.0.1:99999", "a:1", "A:1", "https://b:1"},
			min:       5,
			wantErrs:  []string{"port out of range", "duplicate of entry 2", "cannot be mixed", "fewer than min_cluster_size 5"},
			wantKinds: []error{ErrInvalid, ErrDuplicate, ErrMixedTLS, ErrTooFew},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			eps, err := ParseList(tt.raws, tt.defaultTLS, tt.min)
			if len(tt.wantErrs) == 0 {
				if err != nil {
					t.Fatalf("ParseList: %v", err)
				}
				if got := Strings(eps); strings.Join(got, ",") != strings.Join(tt.want, ",") {
					t.Fatalf("got %q, want %q", got, tt.want)
				}
				return
			}
			if eps != nil {
				t.Fatalf("a rejected list returned endpoints %v", eps)
			}
			got := Errors(err)
			if len(got) != len(tt.wantErrs) {
				t.Fatalf("got %d problems (%v), want %d", len(got), err, len(tt.wantErrs))
			}
			for i, e := range got {
				if !strings.Contains(e.Error(), tt.wantErrs[i]) || !errors.Is(e, tt.wantKinds[i]) {
					t.Errorf("problem %d = %q (kind %v), want %q (kind %v)", i, e, e.Kind, tt.wantErrs[i], tt.wantKinds[i])
				}
			}
		})
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{"127.0.0.1:2379", "https://[::1]:2379", "unix:///x", "h:1", "a:99999", "[::ffff:1.2.3.4]:1"} {
		f.Add(s, false)
	}
	f.Fuzz(func(t *testing.T, raw string, tls bool) {
		ep, err := Parse(raw, tls)
		if err != nil {
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("error %v is not ErrInvalid", err)
			}
			return
		}
		// Whatever is accepted normalizes to a fixed point.
		again, err := Parse(ep.String(), tls)
		if err != nil || again != ep {
			t.Fatalf("%q normalized to %q, which re-parses as %v, %v", raw, ep.String(), again, err)
		}
	})
}
