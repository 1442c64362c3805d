//! schema-registry
