"""The request path, pure: validate -> facts -> screening -> outcome, and the protobuf edge (api)."""
