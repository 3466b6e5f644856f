#!/usr/bin/env bash
# The main job on the built-in example: the reachability matrix, one
# explained verdict, and (as root) the same matrix from real packets in a lab
# node built from network namespaces, beside the verifier's; then the agent
# at work: watching the test API server, programming a lab node, following a
# policy created through the API.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd /  # use the installed package, whatever the current directory holds

echo "== pyipset matrix (TCP 80)"
pyipset matrix -f "$here" --port 80
echo
echo "== pyipset explain: may the data tier reach the middle tier on 8080?"
pyipset explain -f "$here" --from shop/data-0 --to shop/middle-0 --port 8080
echo
if [ "$(id -u)" = 0 ]; then
  echo "== pyipset lab (TCP 80): the kernel, probed with real connections, beside the verifier"
  pyipset lab -f "$here" --port 80
  echo
  echo "== pyipset agent: the example served by the test API server, the agent programming a lab node,"
  echo "   a policy arriving through the API and the lab's matrix following it"
  python3 "$here/agent_demo.py"
else
  echo "== pyipset lab and agent skipped: building network namespaces needs root"
fi
