"""Redis plumbing: connections, the multiplexed connection, the embedded server, key hashing."""
