package main

import (
	"errors"
	"flag"
	"io/fs"
	"os"

	"udp_iaasd/config"
)

// loadConfig reads config.yaml. When -config was not given and the default
// file does not exist, the defaults are used and the returned path is "" (so
// `endpointd validate FILE` works on a machine with no agent installed).
func loadConfig(flags *flag.FlagSet, path string) (*config.Config, string, error) {
	explicit := false
	flags.Visit(func(f *flag.Flag) { explicit = explicit || f.Name == "config" })
	if !explicit {
		if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
			return config.Default(), "", nil
		}
	}
	cfg, err := config.Load(path)
	if err != nil {
		return nil, path, err
	}
	return cfg, path, nil
}

// isContentError tells a file that was read but is invalid (a config.Errors)
// from one that could not be read at all.
func isContentError(err error) bool {
	return errors.Is(err, config.ErrInvalid)
}
