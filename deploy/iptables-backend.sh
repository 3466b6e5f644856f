#!/bin/sh
# Chooses the iptables backend the node already uses (nft or legacy), as
# kube-proxy's iptables-wrapper does: the one holding more rules wins (nft
# when neither holds any), so our rules never land in the other one where
# they would not be seen together with the node's. Then runs the command.
set -eu
nft=$( (iptables-nft-save 2>/dev/null; ip6tables-nft-save 2>/dev/null) | grep -c '^-' || true)
legacy=$( (iptables-legacy-save 2>/dev/null; ip6tables-legacy-save 2>/dev/null) | grep -c '^-' || true)
if [ "${legacy:-0}" -gt "${nft:-0}" ]; then mode=legacy; else mode=nft; fi
for tool in iptables ip6tables; do
  update-alternatives --set "$tool" "/usr/sbin/$tool-$mode" >/dev/null
done
echo "iptables backend: $mode (rules: nft $nft, legacy $legacy)" >&2
exec "$@"
