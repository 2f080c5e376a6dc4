"""A read-only FUSE filesystem over a castore: the `castore` command and the mount."""
