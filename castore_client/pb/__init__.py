"""Generated protobuf and gRPC modules. Do not edit."""
