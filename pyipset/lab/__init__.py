"""The lab: a node made of network namespaces, to check the kernel with real packets."""
