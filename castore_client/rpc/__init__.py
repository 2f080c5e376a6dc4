"""The gRPC transport, the only part of the package that speaks grpc.

`endpoint` dispatches a call by (service, method) name and leaves each concern to its module:
`channel` (options, TLS, why a channel never connected), `namespace` (tvix or snix method
paths), `retry` (backoff and the per-call budget), `failover` (which server is active) and
`cancellation` (calls stopped by the caller's CancelScope). `status` translates status codes
to castore errors and back. The service clients (`blob_client`, `directory_client`,
`pathinfo_client`) sit on `endpoint`; `server` serves any store.
"""
