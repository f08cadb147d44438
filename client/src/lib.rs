//! barkeep client library.
