//! The link between a Rust record type and its Avro schema.

use apache_avro::Schema;
use serde::{Serialize, de::DeserializeOwned};

/// A Rust type that mirrors one of the `.avsc` contracts in `schemas/avro/`.
pub trait AvroRecord: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The schema text exactly as shipped (what is registered with the registry).
    const SCHEMA_JSON: &'static str;

    /// The parsed schema, parsed once per process.
    fn schema() -> &'static Schema;
}

/// Implements [`AvroRecord`] for a type from an `.avsc` file embedded at compile time.
macro_rules! avro_record {
    ($ty:ty, $file:literal) => {
        impl $crate::record::AvroRecord for $ty {
            const SCHEMA_JSON: &'static str =
                include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/avro/", $file));

            fn schema() -> &'static apache_avro::Schema {
                static SCHEMA: std::sync::LazyLock<apache_avro::Schema> = std::sync::LazyLock::new(|| {
                    // The file is embedded at compile time and parsed by this crate's tests, so a
                    // failure here is a build defect, not a runtime condition.
                    apache_avro::Schema::parse_str(<$ty as $crate::record::AvroRecord>::SCHEMA_JSON)
                        .expect(concat!("schemas/avro/", $file, " is a valid Avro schema"))
                });
                &SCHEMA
            }
        }
    };
}
pub(crate) use avro_record;
