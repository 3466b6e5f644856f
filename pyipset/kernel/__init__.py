"""The kernel backend: RuleProgram to ipset and iptables."""
