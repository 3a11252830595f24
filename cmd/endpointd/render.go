package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/coreos/go-systemd/v22/daemon"

	"udp_iaasd/client"
	"udp_iaasd/config"
	"udp_iaasd/render"
)

// renderFlags defines render's flags.
func renderFlags(fs *flag.FlagSet) (cfg *string, once, dryRun *bool, socket *string) {
	cfg = fs.String("config", config.DefaultRenderPath, "`path` of the render file")
	once = fs.Bool("once", false, "render every template once (check and reload included) and exit: 0 all rendered, 1 any failed")
	dryRun = fs.Bool("dry-run", false, "print a unified diff per destination that would change; write and run nothing")
	socket = fs.String("socket", "", "the agent's socket `path` when the render file names none (else $ENDPOINTD_SOCKET, else the default)")
	return
}

// cmdRender is `endpointd render` (API.md "Rendering files from etcd"): a
// client of the agent's socket that keeps files rendered, under systemd as
// endpointd-render@NAME.service (Type=notify; SIGHUP re-reads the render
// file and the templates).
func cmdRender(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	flags := flag.NewFlagSet("endpointd render", flag.ContinueOnError)
	cfgPath, once, dryRun, socketFlag := renderFlags(flags)
	if code, ok := parseFlags(flags, args, stderr); !ok {
		return code
	}
	if flags.NArg() > 0 {
		fmt.Fprintf(stderr, "endpointd render: unexpected arguments %q\n", flags.Args())
		return exitUsage
	}
	if *once && *dryRun {
		fmt.Fprintln(stderr, "endpointd render: -once and -dry-run exclude each other")
		return exitUsage
	}
	set, err := render.Load(*cfgPath)
	if err != nil {
		fmt.Fprintf(stderr, "endpointd render: the render file is invalid; not starting:\n%v\n", err)
		return exitConfig
	}
	socket := set.Config().Socket
	if socket == "" {
		socket = *socketFlag
	}
	if socket == "" {
		socket = os.Getenv("ENDPOINTD_SOCKET")
	}
	if socket == "" {
		socket = client.DefaultSocket
	}
	level := new(slog.LevelVar)
	log := newLogger("text", level, stderr)
	r := render.New(render.Options{
		Client: client.New(socket, client.Options{RetryMax: 2}),
		Logger: log.With("render_file", *cfgPath),
		Notify: func(state string) { daemon.SdNotify(false, state) },
	})
	switch {
	case *dryRun:
		if r.Once(ctx, set, stdout) > 0 {
			return exitFailure
		}
		return exitOK
	case *once:
		if r.Once(ctx, set, nil) > 0 {
			return exitFailure
		}
		return exitOK
	}

	ctx, stop := signal.NotifyContext(ctx, syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	reload := make(chan *render.Set)
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case <-hup:
			}
			daemon.SdNotify(false, daemon.SdNotifyReloading)
			next, err := render.Load(*cfgPath)
			if err != nil {
				log.Error("render: SIGHUP: the render file is invalid; keeping the running templates", "error", err)
				daemon.SdNotify(false, daemon.SdNotifyReady)
				continue
			}
			select {
			case reload <- next:
			case <-ctx.Done():
				return
			}
			daemon.SdNotify(false, daemon.SdNotifyReady)
		}
	}()
	log.Info("render: starting", "version", fullVersion(), "file", *cfgPath, "templates", len(set.Config().Templates), "socket", socket)
	if err := r.Run(ctx, set, reload); err != nil {
		log.Error("render", "error", err)
		return exitFailure
	}
	return exitOK
}
