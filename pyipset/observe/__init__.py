"""What policy blocks: the NFLOG reader, attribution to pods and policies, the exact counts."""
