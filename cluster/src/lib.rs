//! Local Postgres clusters (primary + streaming replicas) from the system binaries.
