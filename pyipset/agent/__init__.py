"""`pyipset agent`: the node agent (watch the API, enforce this node's
program in the kernel, serve health and metrics). See loop.py."""
