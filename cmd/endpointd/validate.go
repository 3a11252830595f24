package main

import (
	"flag"
	"fmt"
	"io"
	"strings"

	"udp_iaasd/agent"
	"udp_iaasd/config"
)

// validateFlags defines validate's flags.
func validateFlags(fs *flag.FlagSet) (configPath *string) {
	return fs.String("config", config.DefaultPath, "`path` of config.yaml (its defaults are used if it is absent and -config is not given)")
}

// cmdValidate checks config.yaml and an endpoints file without contacting
// etcd: exit 0 valid, 1 invalid, 2 usage or I/O error. Problems go to stderr
// as FILE:LINE:COL: message, one per line.
func cmdValidate(args []string, stdout, stderr io.Writer) int {
	flags := flag.NewFlagSet("endpointd validate", flag.ContinueOnError)
	configPath := validateFlags(flags)
	if code, ok := parseFlags(flags, args, stderr); !ok {
		return code
	}
	if flags.NArg() > 1 {
		fmt.Fprintf(stderr, "endpointd validate: one endpoints file at most, got %d\n", flags.NArg())
		return exitUsage
	}
	cfg, cfgPath, err := loadConfig(flags, *configPath)
	if err != nil {
		if !isContentError(err) {
			fmt.Fprintf(stderr, "%s: cannot read: %v\n", *configPath, unwrapPath(err))
			return exitUsage
		}
		fmt.Fprintln(stderr, err)
		return exitFailure
	}
	if cfgPath != "" {
		// The files config.yaml names must be usable too.
		if _, err := agent.EtcdConfig(cfg); err != nil {
			// One line per unusable file.
			fmt.Fprintf(stderr, "%s: %s\n", cfgPath, strings.ReplaceAll(err.Error(), "\n", "\n"+cfgPath+": "))
			return exitFailure
		}
	}

	path := cfg.EndpointsFile
	if flags.NArg() == 1 {
		path = flags.Arg(0)
	}
	data, err := config.ReadFile(path)
	if err != nil {
		fmt.Fprintf(stderr, "%s: cannot read: %v\n", path, unwrapPath(err))
		return exitUsage
	}
	eps, err := config.ParseEndpoints(path, data, cfg.Etcd.TLS.Enabled(), cfg.MinClusterSize)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return exitFailure
	}
	fmt.Fprintf(stdout, "%s: valid: %d endpoints (min_cluster_size %d): %s\n",
		path, len(eps.List), cfg.MinClusterSize, strings.Join(eps.Strings(), ", "))
	return exitOK
}

// unwrapPath drops the "open PATH: " that os errors repeat after our own
// "PATH: cannot read:".
func unwrapPath(err error) error {
	if u, ok := err.(interface{ Unwrap() error }); ok && strings.HasPrefix(err.Error(), "open ") {
		if inner := u.Unwrap(); inner != nil {
			return inner
		}
	}
	return err
}
