#!/bin/sh
# Installs this Bramble build on a board: binaries to /usr/local/bin, board configs to
# /etc/bramble/boards, systemd units to /etc/systemd/system. Run as root from the unpacked
# tarball. Nothing is started: see the hints at the end.
set -eu
cd "$(dirname "$0")"
if [ "$(id -u)" != 0 ]; then
  echo "install.sh: run as root" >&2
  exit 1
fi
install -d /usr/local/bin /etc/bramble/boards /var/lib/bramble
# Where the join token and the agent's arguments go: readable by root only.
[ -e /etc/bramble/agent.env ] || install -m 0600 /dev/null /etc/bramble/agent.env
[ -e /etc/bramble/join-token ] || install -m 0600 /dev/null /etc/bramble/join-token
for b in bin/*; do
  install -m 0755 "$b" /usr/local/bin/
done
install -m 0644 board-configs/*.yaml /etc/bramble/boards/
if [ -d /etc/systemd/system ]; then
  install -m 0644 systemd/*.service /etc/systemd/system/
  systemctl daemon-reload 2>/dev/null || true
fi
echo "installed: $(ls bin | tr '\n' ' ')"
echo
echo "Check the board first:   bramble-agent doctor"
echo "On the master board:     systemctl enable --now bramble-master"
echo "                         bramble token create   (a join token; the master writes the client config)"
echo "On every board:          echo TOKEN > /etc/bramble/join-token   (0600; as 'bramble token create' printed it; the agent deletes it once joined)"
echo "                         echo 'BRAMBLE_AGENT_ARGS=--board pi4b --server https://MASTER:6443 --token-file /etc/bramble/join-token' > /etc/bramble/agent.env"
echo "                         systemctl enable --now bramble-agent"
