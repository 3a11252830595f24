package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/coreos/go-systemd/v22/activation"
	"github.com/coreos/go-systemd/v22/daemon"

	"udp_iaasd/agent"
	"udp_iaasd/config"
)

// runFlags defines run's flags.
func runFlags(fs *flag.FlagSet) (configPath *string) {
	return fs.String("config", config.DefaultPath, "`path` of config.yaml")
}

func cmdRun(ctx context.Context, args []string, stderr io.Writer) int {
	flags := flag.NewFlagSet("endpointd run", flag.ContinueOnError)
	configPath := runFlags(flags)
	if code, ok := parseFlags(flags, args, stderr); !ok {
		return code
	}
	if flags.NArg() > 0 {
		fmt.Fprintf(stderr, "endpointd run: unexpected arguments %q\n", flags.Args())
		return exitUsage
	}
	cfg, cfgPath, err := loadConfig(flags, *configPath)
	if err != nil {
		fmt.Fprintf(stderr, "endpointd run: config.yaml is invalid; not starting:\n%v\n", err)
		return exitConfig
	}
	level := new(slog.LevelVar)
	level.Set(agent.ParseLevel(cfg.Log.Level))
	log := newLogger(cfg.Log.Format, level, stderr)
	procs, gogc := agent.RuntimeSettings()
	log.Info("starting", "version", fullVersion(), "gomaxprocs", procs, "gogc", gogc)
	if cfgPath == "" {
		log.Info("no config file; using the defaults", "looked_for", *configPath)
	}

	ln, gln, err := activatedListeners()
	if err != nil {
		log.Error("socket activation", "error", err)
		return exitFailure
	}
	a, err := agent.New(agent.Options{
		Config:       cfg,
		ConfigPath:   cfgPath,
		Version:      version,
		Logger:       log,
		LogLevel:     level,
		Listener:     ln,
		GRPCListener: gln,
		Notify:       func(state string) { daemon.SdNotify(false, state) },
	})
	if err != nil {
		log.Error("cannot start", "error", err)
		return exitConfig
	}
	defer a.Close()

	ctx, stop := signal.NotifyContext(ctx, syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	var wg sync.WaitGroup
	defer wg.Wait()
	defer stop() // runs before wg.Wait: ends the goroutines below

	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	wg.Go(func() {
		for {
			select {
			case <-ctx.Done():
				return
			case <-hup:
				log.Info("SIGHUP: reloading")
				a.Reload()
			}
		}
	})
	if interval, err := daemon.SdWatchdogEnabled(false); err == nil && interval > 0 {
		wg.Go(func() { watchdog(ctx, a, interval, log) })
	}

	if err := a.Run(ctx); err != nil {
		log.Error("agent failed", "error", err)
		return exitFailure
	}
	return exitOK
}

// watchdog pings systemd at half its interval, but only after the agent's
// self-check passes: a hung server must let the watchdog fire.
func watchdog(ctx context.Context, a *agent.Agent, interval time.Duration, log *slog.Logger) {
	t := time.NewTicker(interval / 2)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if err := a.SelfCheck(ctx); err != nil {
				log.Warn("self-check failed; withholding the watchdog ping", "error", err)
				continue
			}
			daemon.SdNotify(false, daemon.SdNotifyWatchdog)
		}
	}
}

// activatedListeners returns the sockets systemd passed (LISTEN_FDS), if
// any: the HTTP API's, named endpointd.socket or endpointd
// (FileDescriptorName=), else the only one passed that is not the gRPC
// socket; and the gRPC API's, named endpointd-grpc.socket or
// endpointd-grpc.
func activatedListeners() (http, grpc net.Listener, err error) {
	if os.Getenv("LISTEN_FDS") == "" {
		return nil, nil, nil
	}
	named, err := activation.ListenersWithNames()
	if err != nil {
		return nil, nil, err
	}
	first := func(names ...string) net.Listener {
		for _, name := range names {
			if ls := named[name]; len(ls) > 0 && ls[0] != nil {
				delete(named, name)
				return ls[0]
			}
		}
		return nil
	}
	grpc = first("endpointd-grpc.socket", "endpointd-grpc")
	if http = first("endpointd.socket", "endpointd"); http != nil {
		return http, grpc, nil
	}
	var all []net.Listener
	for _, ls := range named {
		for _, l := range ls {
			if l != nil {
				all = append(all, l)
			}
		}
	}
	if len(all) == 1 {
		return all[0], grpc, nil
	}
	return nil, nil, fmt.Errorf("systemd passed %d sockets and none is named endpointd.socket", len(all))
}
