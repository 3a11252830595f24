package agent

import (
	"errors"
	"fmt"

	"udp_iaasd/config"
	"udp_iaasd/etcd"
)

// EtcdConfig is the etcd client's configuration from cfg, with the files
// cfg names read now: the TLS certificates and keys, and the password. The
// agent builds its client from it at start and checks a reload with it;
// `endpointd validate` checks that the files are usable. Errors name the
// config.yaml setting.
func EtcdConfig(cfg *config.Config) (etcd.Config, error) {
	e := cfg.Etcd
	c := etcd.Config{
		DialTimeout:         e.DialTimeout,
		RequestTimeout:      e.RequestTimeout,
		KeepAliveTime:       e.KeepaliveTime,
		KeepAliveTimeout:    e.KeepaliveTimeout,
		ProbeTimeout:        e.ProbeTimeout,
		SuspectAfter:        e.SuspectAfter,
		ConnectSpread:       e.ConnectSpread,
		RebalanceSpread:     e.RebalanceSpread,
		Username:            e.Username,
		Backoff:             cfg.Backoff,
		StatusProbeInterval: e.StatusProbeInterval,
	}
	var terr, perr error
	if e.TLS.Enabled() {
		if c.TLS, terr = etcd.TLSFiles(e.TLS).Load(); terr != nil {
			terr = fmt.Errorf("etcd.tls: %w", terr)
		}
	}
	if e.PasswordFile != "" {
		if c.Password, perr = etcd.ReadPasswordFile(e.PasswordFile); perr != nil {
			perr = fmt.Errorf("etcd.password_file: %w", perr)
		}
	}
	if err := errors.Join(terr, perr); err != nil {
		return etcd.Config{}, err
	}
	return c, nil
}
