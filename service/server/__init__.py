"""The gRPC server: wiring, admin services, metrics, access control."""
