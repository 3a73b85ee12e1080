"""grpc_api."""
