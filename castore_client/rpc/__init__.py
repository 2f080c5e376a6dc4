"""The gRPC transport: channels, namespaced method binding, clients and the server."""
