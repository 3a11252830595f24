#!/usr/bin/env bash
# Installs an endpointd .deb on this machine, checks what it installed and
# that it works, upgrades over an edited config, then removes and purges it
# and checks that nothing is left. It changes the system (a user, files in
# /usr and /etc): .ci/run runs it as root on a throwaway machine.
#
#   bash packaging/test-install.sh dist/endpointd_*.deb
set -euo pipefail
deb=$1
fail() { echo "test-install: $*" >&2; exit 1; }

if dpkg-query -W endpointd >/dev/null 2>&1; then
  fail "endpointd is already installed here; this check needs a machine without it"
fi
before=$(mktemp)
agent=
trap 'rm -f "$before"; [ -z "$agent" ] || kill "$agent" 2>/dev/null || true' EXIT
# What the package may touch outside its own file list, before it comes.
find /etc/systemd /var/lib/systemd/deb-systemd-helper-enabled /run -name '*endpointd*' 2>/dev/null | sort > "$before" || true

echo "-- dpkg -i"
dpkg -i "$deb"

echo "-- user, group, files"
getent passwd endpointd | grep -q ':/usr/sbin/nologin$' || fail "no endpointd user with nologin shell: $(getent passwd endpointd)"
getent group endpointd >/dev/null || fail "no endpointd group"
for f in /usr/bin/endpointd \
  /usr/lib/systemd/system/endpointd.service /usr/lib/systemd/system/endpointd.socket \
  /usr/lib/systemd/system/endpointd-grpc.socket /usr/lib/systemd/system/endpointd-render@.service \
  /usr/lib/sysusers.d/endpointd.conf /usr/lib/tmpfiles.d/endpointd.conf \
  /etc/endpointd/config.yaml /usr/share/man/man1/endpointd.1.gz \
  /usr/share/bash-completion/completions/endpointd /usr/share/zsh/vendor-completions/_endpointd \
  /usr/share/doc/endpointd/copyright /usr/share/doc/endpointd/changelog.Debian.gz \
  /usr/share/doc/endpointd/api.md.gz /usr/share/doc/endpointd/render.md.gz \
  /usr/share/doc/endpointd/examples/endpoints.yaml; do
  [ -f "$f" ] || fail "$f is missing"
done
dpkg-query -W -f='${Conffiles}\n' endpointd | grep -q ' /etc/endpointd/config.yaml ' ||
  fail "/etc/endpointd/config.yaml is not a conffile"
[ "$(stat -c %U:%G /run/endpointd)" = endpointd:endpointd ] || fail "/run/endpointd is $(stat -c %U:%G /run/endpointd)"
# Enabled on install (the symlinks deb-systemd-helper makes, PID 1 or not).
[ -L /etc/systemd/system/multi-user.target.wants/endpointd.service ] || fail "endpointd.service is not enabled"
[ -L /etc/systemd/system/sockets.target.wants/endpointd.socket ] || fail "endpointd.socket is not enabled"
grep -q '^ExecStart=/usr/bin/endpointd run' /usr/lib/systemd/system/endpointd.service || fail "the unit does not start /usr/bin/endpointd"

echo "-- the installed binary and config"
endpointd version
endpointd version | grep -q "v$(dpkg-query -W -f='${Version}' endpointd | sed 's/-[^-]*$//')" ||
  fail "endpointd version does not report the package's version"
endpointd validate -config /etc/endpointd/config.yaml /usr/share/doc/endpointd/examples/endpoints.yaml
if endpointd dev 2>/dev/null; then fail "the packaged binary has the dev cluster in it"; fi
man -w endpointd >/dev/null 2>&1 || [ ! -x /usr/bin/man ] || fail "man does not find endpointd(1)"
bash -c 'source /usr/share/bash-completion/completions/endpointd && complete -p endpointd' >/dev/null ||
  fail "the bash completion does not load"

echo "-- the agent runs as endpointd on the packaged layout"
# As the unit would (no systemd here to ask): the endpointd user, the shipped
# config, its socket in /run/endpointd. No endpoints file yet: the agent
# serves and says what it waits for.
setpriv --reuid=endpointd --regid=endpointd --init-groups endpointd run -config /etc/endpointd/config.yaml 2>/tmp/endpointd-test-install.log &
agent=$!
for _ in $(seq 100); do [ -S /run/endpointd/endpointd.sock ] && break; sleep 0.1; done
status=$(endpointd status -json) && code=0 || code=$?
[ "$code" = 1 ] || fail "endpointd status exit $code (want 1, not ready): $status"
echo "$status" | grep -q 'endpoints.yaml: file is missing' || fail "status does not say what it waits for: $status"
[ "$(stat -c '%U:%G %a' /run/endpointd/endpointd.sock)" = "endpointd:endpointd 660" ] ||
  fail "socket is $(stat -c '%U:%G %a' /run/endpointd/endpointd.sock)"
kill -TERM "$agent"
wait "$agent" || fail "the agent exited $? on SIGTERM: $(cat /tmp/endpointd-test-install.log)"
agent=
rm -f /tmp/endpointd-test-install.log

echo "-- upgrade keeps an edited config"
echo "# edited by the operator" >> /etc/endpointd/config.yaml
dpkg -i "$deb"
grep -q '^# edited by the operator$' /etc/endpointd/config.yaml || fail "the upgrade replaced an edited config.yaml"

echo "-- dpkg -r: binary gone, config kept, units disabled"
dpkg -r endpointd
[ ! -e /usr/bin/endpointd ] || fail "/usr/bin/endpointd is still there after remove"
[ -f /etc/endpointd/config.yaml ] || fail "remove deleted the config (only purge should)"
[ ! -e /etc/systemd/system/multi-user.target.wants/endpointd.service ] || fail "endpointd.service still enabled after remove"

echo "-- dpkg --purge: nothing left"
dpkg --purge endpointd
! dpkg-query -W endpointd >/dev/null 2>&1 || [ "$(dpkg-query -W -f='${Status}' endpointd)" = "unknown ok not-installed" ] ||
  fail "dpkg still knows endpointd: $(dpkg-query -W -f='${Status}' endpointd)"
[ ! -e /etc/endpointd ] || fail "/etc/endpointd is left: $(ls -la /etc/endpointd)"
! getent passwd endpointd >/dev/null || fail "the endpointd user is left"
! getent group endpointd >/dev/null || fail "the endpointd group is left"
after=$(find /etc/systemd /var/lib/systemd/deb-systemd-helper-enabled /run -name '*endpointd*' 2>/dev/null | sort || true)
[ "$after" = "$(cat "$before")" ] || fail "left behind: $(comm -13 "$before" <(echo "$after"))"
for d in /usr/share/doc/endpointd /usr/lib/systemd/system/endpointd.service /usr/share/man/man1/endpointd.1.gz; do
  [ ! -e "$d" ] || fail "$d is left"
done
echo "test-install: ok"
