//! pgsteer.
