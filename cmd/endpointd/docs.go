package main

import (
	"flag"
	"fmt"
	"io"
	"sort"
	"strings"
)

// The man page and the shell completions are generated here from commands,
// whose flags are each command's own definitions. packaging/ ships the
// generated files; TestGeneratedDocs fails when they differ from what this
// code writes, so a flag cannot be added without them following.

func cmdMan(args []string, stdout, stderr io.Writer) int {
	if len(args) == 1 && isHelp(args[0]) {
		fmt.Fprintln(stdout, "usage: endpointd man   (then: endpointd man | man -l -)")
		return exitOK
	}
	if len(args) != 0 {
		fmt.Fprintln(stderr, "usage: endpointd man   (then: endpointd man | man -l -)")
		return exitUsage
	}
	writeMan(stdout)
	return exitOK
}

func cmdCompletion(args []string, stdout, stderr io.Writer) int {
	if len(args) == 1 {
		switch args[0] {
		case "bash":
			writeBashCompletion(stdout)
			return exitOK
		case "zsh":
			writeZshCompletion(stdout)
			return exitOK
		}
	}
	const help = "usage: endpointd completion bash|zsh\n" +
		"  bash: source <(endpointd completion bash)\n" +
		"  zsh:  endpointd completion zsh > \"${fpath[1]}/_endpointd\""
	switch {
	case len(args) == 1 && isHelp(args[0]):
		fmt.Fprintln(stdout, help)
		return exitOK
	case len(args) == 1:
		fmt.Fprintf(stderr, "endpointd completion: %q is not supported; bash and zsh are\n%s\n", args[0], help)
	default:
		fmt.Fprintln(stderr, help)
	}
	return exitUsage
}

// isHelp: arg asks for help.
func isHelp(arg string) bool {
	return arg == "-h" || arg == "-help" || arg == "--help" || arg == "help"
}

// roff escapes s for a man page line: backslashes, minus signs (which a
// hyphen would otherwise render as), and a leading control character.
func roff(s string) string {
	s = strings.NewReplacer(`\`, `\e`, "-", `\-`).Replace(s)
	if strings.HasPrefix(s, ".") || strings.HasPrefix(s, "'") {
		s = `\&` + s
	}
	return s
}

// flagDefault is f's default as the man page shows it, "" for a zero one.
func flagDefault(f *flag.Flag) string {
	switch f.DefValue {
	case "", "0", "false", "0s":
		return ""
	case "-1ns":
		return "" // -wait: unset means wait forever, said in its usage
	}
	return f.DefValue
}

func writeMan(w io.Writer) {
	p := func(format string, args ...any) { fmt.Fprintf(w, format+"\n", args...) }
	p(fmt.Sprintf(`.TH ENDPOINTD 1 "%s" "endpointd %s" "endpointd manual"`, releaseDate, version))
	p(`.SH NAME`)
	p(`endpointd \- keep this host's etcd endpoints current and serve local etcd access on a unix socket`)
	p(`.SH SYNOPSIS`)
	p(`.B endpointd`)
	p(`.I command`)
	p(`.RI [ flags ]`)
	p(`.RI [ arguments ]`)
	p(`.SH DESCRIPTION`)
	p(`.B endpointd run`)
	p(`is the agent that systemd starts: it watches the endpoints file that config.yaml names, validates every`)
	p(`version strictly and applies it to a live etcd client without a restart, and serves HTTP/JSON access to etcd`)
	p(`(keys, compare\-and\-swap, TTL keys, watches, transactions, locks, elections) on a unix socket, and optionally`)
	p(`etcd's own gRPC API on a second one. The other commands are its clients and tools.`)
	p(`.PP`)
	p(`Flags may also follow the arguments of the kv commands`)
	p(`.RB ( "endpointd kv del KEY \-prefix" ).`)
	p(`.SH COMMANDS`)
	for _, c := range commands {
		p(`.SS "endpointd %s"`, c.name)
		p(`.B endpointd %s`, c.name)
		if syn := c.synopsis(); syn != "" {
			p(`%s`, roff(syn))
		}
		p(`.br`)
		p(`%s.`, roff(c.summary))
		c.flagSet().VisitAll(func(f *flag.Flag) {
			p(`.TP`)
			if arg := flagArg(f); arg != "" {
				p(`.BI \-%s " %s"`, roff(f.Name), roff(arg))
			} else {
				p(`.B \-%s`, roff(f.Name))
			}
			_, text := flag.UnquoteUsage(f)
			if d := flagDefault(f); d != "" {
				text += " (default " + d + ")"
			}
			p(`%s`, roff(text))
		})
	}
	p(`.SH FILES`)
	for _, f := range [][2]string{
		{"/etc/endpointd/config.yaml", "the agent's settings; every key is optional (documented example: /usr/share/doc/endpointd/examples/config.yaml)"},
		{"/etc/endpointd/endpoints.yaml", "the etcd endpoint list, usually written by configuration management; re-read on every change"},
		{"/run/endpointd/endpointd.sock", "the HTTP/JSON socket (socket.path)"},
		{"/usr/lib/systemd/system/endpointd.service", "the unit; endpointd.socket and endpointd-grpc.socket for socket activation"},
	} {
		p(`.TP`)
		p(`.I %s`, roff(f[0]))
		p(`%s`, roff(f[1]))
	}
	p(`.SH ENVIRONMENT`)
	for _, e := range [][2]string{
		{"ENDPOINTD_SOCKET", "the agent's socket, for the client commands when -socket is not given"},
		{"ENDPOINTD_LOCK_KEY, ENDPOINTD_LOCK_REVISION", "set by lock for CMD: the lock's key and its fencing token"},
		{"ENDPOINTD_ELECTION_KEY, ENDPOINTD_ELECTION_REVISION", "set by elect for CMD: the leader key and its revision"},
		{"GOMAXPROCS, GOGC", "run: when set, used as given; otherwise the agent runs on one P with GOGC=200 (README, Runtime settings)"},
	} {
		p(`.TP`)
		p(`.B %s`, roff(e[0]))
		p(`%s`, roff(e[1]))
	}
	p(`.SH EXIT STATUS`)
	for _, e := range [][2]string{
		{"0", "success"},
		{"1", "validate: the input is invalid; kv: the key is absent or a condition failed; status: the agent is not ready; lock: -wait ran out"},
		{"2", "usage, or a request refused as malformed"},
		{"3", "the agent or etcd is unavailable; lock, elect: the hold was lost"},
		{"78", "run: config.yaml is invalid (EX_CONFIG; the unit does not restart on it); kv, status, lock, elect: the config.yaml that -config names cannot be used"},
	} {
		p(`.TP`)
		p(`.B %s`, e[0])
		p(`%s`, roff(e[1]))
	}
	p(`.PP`) // a paragraph of its own, not the last entry's description
	p(`lock and elect exit with CMD's status (128+N when signal N ended it).`)
	p(`.SH EXAMPLES`)
	for _, e := range []string{
		"endpointd validate -config /etc/endpointd/config.yaml",
		"endpointd kv put app/config '{\"debug\":true}' -if-absent",
		"endpointd kv watch app/ -prefix",
		"endpointd lock -wait 30s nightly-backup -- /usr/local/bin/backup.sh",
		"curl --unix-socket /run/endpointd/endpointd.sock http://localhost/v1/status",
	} {
		p(`.PP`)
		p(`.nf`)
		p(`%s`, roff(e))
		p(`.fi`)
	}
	p(`.SH SEE ALSO`)
	p(`.BR systemctl (1),`)
	p(`.BR etcdctl (1),`)
	p(`and /usr/share/doc/endpointd/README.md.gz.`)
}

// completionSpec is what both shells need to know of one command.
type completionSpec struct {
	name        string
	summary     string
	flags       []*flag.Flag
	fileFlags   []string // flags whose value is a path
	valueFlags  []string // flags that take a value (paths included)
	filesAsArgs bool     // its arguments are paths
	commandArgs bool     // it runs a command after "--"
}

func completionSpecs() []completionSpec {
	var specs []completionSpec
	for _, c := range commands {
		s := completionSpec{
			name:        c.name,
			summary:     c.summary,
			filesAsArgs: c.name == "validate",
			commandArgs: c.name == "lock" || c.name == "elect",
		}
		c.flagSet().VisitAll(func(f *flag.Flag) {
			s.flags = append(s.flags, f)
			if flagArg(f) == "" {
				return
			}
			s.valueFlags = append(s.valueFlags, "-"+f.Name)
			if flagArg(f) == "PATH" {
				s.fileFlags = append(s.fileFlags, "-"+f.Name)
			}
		})
		specs = append(specs, s)
	}
	return specs
}

// topLevel is the first words of commands, in order, and the kv
// subcommands.
func topLevel() (words, kv []string) {
	seen := map[string]bool{}
	for _, c := range commands {
		first, rest, _ := strings.Cut(c.name, " ")
		if !seen[first] {
			seen[first] = true
			words = append(words, first)
		}
		if first == "kv" {
			kv = append(kv, rest)
		}
	}
	return words, kv
}

func writeBashCompletion(w io.Writer) {
	p := func(format string, args ...any) { fmt.Fprintf(w, format+"\n", args...) }
	words, kv := topLevel()
	p(`# bash completion for endpointd. Generated by "endpointd completion bash"; do not edit.`)
	p(`_endpointd() {`)
	p(`	local cur=${COMP_WORDS[COMP_CWORD]} prev=${COMP_WORDS[COMP_CWORD-1]} cmd=${COMP_WORDS[1]} first=2 i`)
	p(`	COMPREPLY=()`)
	p(`	if [[ $COMP_CWORD -eq 1 ]]; then`)
	p(`		COMPREPLY=($(compgen -W '%s' -- "$cur"))`, strings.Join(words, " "))
	p(`		return`)
	p(`	fi`)
	p(`	if [[ $cmd == kv ]]; then`)
	p(`		if [[ $COMP_CWORD -eq 2 ]]; then`)
	p(`			COMPREPLY=($(compgen -W '%s' -- "$cur"))`, strings.Join(kv, " "))
	p(`			return`)
	p(`		fi`)
	p(`		cmd="kv ${COMP_WORDS[2]}" first=3`)
	p(`	fi`)
	p(`	case $cmd in`)
	p(`	completion) COMPREPLY=($(compgen -W 'bash zsh' -- "$cur")) ;;`)
	for _, s := range completionSpecs() {
		if len(s.flags) == 0 {
			continue
		}
		var names []string
		for _, f := range s.flags {
			names = append(names, "-"+f.Name)
		}
		sort.Strings(names)
		p(`	%q)`, s.name)
		if s.commandArgs {
			// After "--" comes a command and its arguments.
			p(`		for ((i = first; i < COMP_CWORD; i++)); do`)
			p(`			if [[ ${COMP_WORDS[i]} == -- ]]; then`)
			p(`				if [[ $i -eq $((COMP_CWORD - 1)) ]]; then COMPREPLY=($(compgen -c -- "$cur")); else COMPREPLY=($(compgen -f -- "$cur")); fi`)
			p(`				return`)
			p(`			fi`)
			p(`		done`)
		}
		if len(s.valueFlags) > 0 {
			p(`		case $prev in`)
			if len(s.fileFlags) > 0 {
				p(`		%s) COMPREPLY=($(compgen -f -- "$cur")); return ;;`, strings.Join(s.fileFlags, "|"))
			}
			if other := without(s.valueFlags, s.fileFlags); len(other) > 0 {
				p(`		%s) return ;;`, strings.Join(other, "|"))
			}
			p(`		esac`)
		}
		if s.filesAsArgs {
			p(`		if [[ $cur != -* ]]; then COMPREPLY=($(compgen -f -- "$cur")); return; fi`)
		}
		p(`		COMPREPLY=($(compgen -W '%s' -- "$cur"))`, strings.Join(names, " "))
		p(`		;;`)
	}
	p(`	esac`)
	p(`}`)
	p(`complete -o filenames -F _endpointd endpointd`)
}

func without(all, drop []string) []string {
	var out []string
	for _, a := range all {
		found := false
		for _, d := range drop {
			found = found || a == d
		}
		if !found {
			out = append(out, a)
		}
	}
	return out
}

// zshQuote quotes s for a single-quoted zsh word holding an _arguments or
// _describe spec, where ':' '[' and ']' are the spec's own syntax.
func zshQuote(s string) string {
	s = strings.NewReplacer(`\`, `\\`, ":", `\:`, "[", `\[`, "]", `\]`).Replace(s)
	return strings.ReplaceAll(s, "'", `'\''`)
}

func writeZshCompletion(w io.Writer) {
	p := func(format string, args ...any) { fmt.Fprintf(w, format+"\n", args...) }
	specs := completionSpecs()
	summary := map[string]string{}
	for _, s := range specs {
		summary[s.name] = s.summary
	}
	words, kv := topLevel()
	p(`#compdef endpointd`)
	p(`# zsh completion for endpointd. Generated by "endpointd completion zsh"; do not edit.`)
	p(``)
	p(`_endpointd() {`)
	p(`	local -a cmds`)
	p(`	if (( CURRENT == 2 )); then`)
	p(`		cmds=(`)
	for _, c := range words {
		s := summary[c]
		if c == "kv" {
			s = "read and write etcd through the agent's socket"
		}
		p(`			'%s:%s'`, c, zshQuote(s))
	}
	p(`		)`)
	p(`		_describe -t commands 'endpointd command' cmds`)
	p(`		return`)
	p(`	fi`)
	p(`	local cmd=$words[2]`)
	p(`	shift words; (( CURRENT-- ))`)
	p(`	if [[ $cmd == kv ]]; then`)
	p(`		if (( CURRENT == 2 )); then`)
	p(`			cmds=(`)
	for _, c := range kv {
		p(`				'%s:%s'`, c, zshQuote(summary["kv "+c]))
	}
	p(`			)`)
	p(`			_describe -t commands 'endpointd kv command' cmds`)
	p(`			return`)
	p(`		fi`)
	p(`		cmd="kv $words[2]"`)
	p(`		shift words; (( CURRENT-- ))`)
	p(`	fi`)
	p(`	case $cmd in`)
	p(`	completion) _arguments '1:shell:(bash zsh)' ;;`)
	for _, s := range specs {
		if len(s.flags) == 0 && !s.filesAsArgs {
			continue
		}
		p(`	%q)`, s.name)
		p(`		_arguments -S \`)
		for _, f := range s.flags {
			_, usage := flag.UnquoteUsage(f)
			arg := flagArg(f)
			switch {
			case arg == "":
				p(`			'-%s[%s]' \`, f.Name, zshQuote(usage))
			case arg == "PATH":
				p(`			'-%s[%s]:%s:_files' \`, f.Name, zshQuote(usage), strings.ToLower(arg))
			default:
				p(`			'-%s[%s]:%s:' \`, f.Name, zshQuote(usage), strings.ToLower(arg))
			}
		}
		if s.filesAsArgs {
			p(`			'*:file:_files'`)
		} else {
			p(`			'*:argument:'`)
		}
		p(`		;;`)
	}
	p(`	esac`)
	p(`}`)
	p(``)
	p(`_endpointd "$@"`)
}
