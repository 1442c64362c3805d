//! Compatibility levels and the decision whether a new schema may join a subject.
//!
//! The rules follow Confluent's Avro compatibility checker:
//!
//! * `BACKWARD`: the new schema can read data written with the previous schema(s).
//! * `FORWARD`: the previous schema(s) can read data written with the new schema.
//! * `FULL`: both.
//! * The `_TRANSITIVE` variants check against every live version, the others against the
//!   latest one only.
//! * `NONE`: anything goes.
//!
//! Reading is decided with `apache_avro::schema_compatibility::SchemaCompatibility::can_read`.
//! A *partial* result (for example a reader enum that lacks some of the writer's symbols, or a
//! reader union that lacks some of the writer's branches) counts as incompatible, as it does in
//! Confluent's checker: some data written with the writer schema could not be read.

use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::str::FromStr;

use apache_avro::Schema;
use apache_avro::error::CompatibilityError;
use apache_avro::schema_compatibility::{self, SchemaCompatibility};
use serde::{Deserialize, Serialize};

/// A subject's (or the global) compatibility level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Compatibility {
    None,
    #[default]
    Backward,
    BackwardTransitive,
    Forward,
    ForwardTransitive,
    Full,
    FullTransitive,
}

impl Compatibility {
    /// All levels, in the order Confluent documents them.
    pub const ALL: [Compatibility; 7] = [
        Compatibility::None,
        Compatibility::Backward,
        Compatibility::BackwardTransitive,
        Compatibility::Forward,
        Compatibility::ForwardTransitive,
        Compatibility::Full,
        Compatibility::FullTransitive,
    ];

    /// The name used on the wire (`BACKWARD_TRANSITIVE`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Compatibility::None => "NONE",
            Compatibility::Backward => "BACKWARD",
            Compatibility::BackwardTransitive => "BACKWARD_TRANSITIVE",
            Compatibility::Forward => "FORWARD",
            Compatibility::ForwardTransitive => "FORWARD_TRANSITIVE",
            Compatibility::Full => "FULL",
            Compatibility::FullTransitive => "FULL_TRANSITIVE",
        }
    }

    fn backward(self) -> bool {
        matches!(
            self,
            Compatibility::Backward
                | Compatibility::BackwardTransitive
                | Compatibility::Full
                | Compatibility::FullTransitive
        )
    }

    fn forward(self) -> bool {
        matches!(
            self,
            Compatibility::Forward
                | Compatibility::ForwardTransitive
                | Compatibility::Full
                | Compatibility::FullTransitive
        )
    }

    fn transitive(self) -> bool {
        matches!(
            self,
            Compatibility::BackwardTransitive
                | Compatibility::ForwardTransitive
                | Compatibility::FullTransitive
        )
    }
}

impl fmt::Display for Compatibility {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Error for a string that names no compatibility level.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid compatibility level {0:?}; valid values are NONE, BACKWARD, BACKWARD_TRANSITIVE, FORWARD, FORWARD_TRANSITIVE, FULL and FULL_TRANSITIVE"
)]
pub struct InvalidCompatibility(pub String);

impl FromStr for Compatibility {
    type Err = InvalidCompatibility;

    /// Case-insensitive, like Confluent.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let wanted = s.trim();
        Compatibility::ALL
            .into_iter()
            .find(|level| level.as_str().eq_ignore_ascii_case(wanted))
            .ok_or_else(|| InvalidCompatibility(s.to_owned()))
    }
}

/// One reason why a new schema is not compatible with an earlier version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incompatibility {
    /// Confluent-style error type, e.g. `READER_FIELD_MISSING_DEFAULT_VALUE`.
    pub error_type: &'static str,
    /// Human-readable explanation.
    pub description: String,
    /// The version the new schema was checked against.
    pub old_version: u32,
}

/// An earlier version of a subject, as input to [`check`].
#[derive(Debug, Clone, Copy)]
pub struct Previous<'a> {
    pub version: u32,
    pub schema: &'a Schema,
}

/// Decide whether `new` may be added to a subject whose live versions are `previous`
/// (oldest first) under `level`.
///
/// Returns the problems found against the newest incompatible version (empty when
/// compatible). Non-transitive levels look at the last element of `previous` only.
pub fn check(level: Compatibility, new: &Schema, previous: &[Previous<'_>]) -> Vec<Incompatibility> {
    let against: &[Previous<'_>] = if level.transitive() {
        previous
    } else {
        match previous.last() {
            Some(last) => std::slice::from_ref(last),
            None => &[],
        }
    };
    for old in against.iter().rev() {
        let mut problems = Vec::new();
        if level.backward()
            && let Some((error_type, why)) = can_read(old.schema, new)
        {
            problems.push(Incompatibility {
                error_type,
                description: format!(
                    "The new schema cannot read data written with version {}: {why}",
                    old.version
                ),
                old_version: old.version,
            });
        }
        if level.forward()
            && let Some((error_type, why)) = can_read(new, old.schema)
        {
            problems.push(Incompatibility {
                error_type,
                description: format!(
                    "Version {} cannot read data written with the new schema: {why}",
                    old.version
                ),
                old_version: old.version,
            });
        }
        if !problems.is_empty() {
            return problems;
        }
    }
    Vec::new()
}

/// `None` when `reader` can read everything written with `writer`; otherwise an error type
/// and an explanation.
fn can_read(writer: &Schema, reader: &Schema) -> Option<(&'static str, String)> {
    let outcome = catch_unwind(AssertUnwindSafe(|| SchemaCompatibility::can_read(writer, reader)));
    match outcome {
        Ok(Ok(schema_compatibility::Compatibility::Full)) => None,
        Ok(Ok(schema_compatibility::Compatibility::Partial)) => Some((
            "MISSING_UNION_BRANCH_OR_ENUM_SYMBOL",
            "the reader can resolve only some of the writer's values (a union branch or an enum \
             symbol of the writer is missing in the reader)"
                .to_owned(),
        )),
        Ok(Err(err)) => Some(describe(&err)),
        Err(_) => Some((
            "UNKNOWN",
            "the compatibility check failed on these schemas".to_owned(),
        )),
    }
}

fn describe(err: &CompatibilityError) -> (&'static str, String) {
    match err {
        CompatibilityError::FieldTypeMismatch(field, inner) => {
            let (error_type, why) = describe(inner);
            (error_type, format!("field '{field}': {why}"))
        }
        CompatibilityError::MissingDefaultValue(field) => (
            "READER_FIELD_MISSING_DEFAULT_VALUE",
            format!(
                "the reader's field '{field}' has no default value and is missing in the writer's schema"
            ),
        ),
        CompatibilityError::MissingSymbols => (
            "MISSING_ENUM_SYMBOLS",
            "the reader's enum has none of the writer's symbols".to_owned(),
        ),
        CompatibilityError::MissingUnionElements | CompatibilityError::SchemaMismatchAllUnionElements => (
            "MISSING_UNION_BRANCH",
            "no branch of the reader's union matches the writer's schema".to_owned(),
        ),
        CompatibilityError::FixedMismatch => (
            "FIXED_SIZE_MISMATCH",
            "the sizes of the fixed types differ".to_owned(),
        ),
        CompatibilityError::NameMismatch {
            writer_name,
            reader_name,
        } => (
            "NAME_MISMATCH",
            format!("the writer's type is named '{writer_name}' but the reader's '{reader_name}'"),
        ),
        CompatibilityError::DecimalMismatch { .. } | CompatibilityError::Inconclusive(_) => {
            ("TYPE_MISMATCH", err.to_string())
        }
        // These variants carry pretty-printed schemas; keep the message short.
        CompatibilityError::WrongType { .. } | CompatibilityError::TypeExpected { .. } => (
            "TYPE_MISMATCH",
            "the writer's type cannot be resolved to the reader's type".to_owned(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Schema {
        Schema::parse_str(s).expect("test schema parses")
    }

    const V1: &str = r#"{"type":"record","name":"User","fields":[{"name":"id","type":"long"}]}"#;
    const WITH_DEFAULT: &str = r#"{"type":"record","name":"User","fields":[{"name":"id","type":"long"},{"name":"email","type":"string","default":""}]}"#;
    const WITHOUT_DEFAULT: &str = r#"{"type":"record","name":"User","fields":[{"name":"id","type":"long"},{"name":"email","type":"string"}]}"#;
    const EMPTY: &str = r#"{"type":"record","name":"User","fields":[]}"#;
    const INT_ID: &str = r#"{"type":"record","name":"User","fields":[{"name":"id","type":"int"}]}"#;

    fn decide(level: Compatibility, new: &str, previous: &[&str]) -> bool {
        let new = parse(new);
        let old: Vec<Schema> = previous.iter().map(|s| parse(s)).collect();
        let previous: Vec<Previous<'_>> = old
            .iter()
            .enumerate()
            .map(|(i, schema)| Previous {
                version: u32::try_from(i + 1).unwrap_or(u32::MAX),
                schema,
            })
            .collect();
        check(level, &new, &previous).is_empty()
    }

    #[test]
    fn parses_levels_case_insensitively() {
        for level in Compatibility::ALL {
            assert_eq!(level.as_str().parse::<Compatibility>(), Ok(level));
            assert_eq!(level.as_str().to_lowercase().parse::<Compatibility>(), Ok(level));
        }
        assert!("SIDEWAYS".parse::<Compatibility>().is_err());
        assert!("".parse::<Compatibility>().is_err());
        assert_eq!(Compatibility::default(), Compatibility::Backward);
    }

    #[test]
    fn serde_uses_wire_names() {
        let json = serde_json::to_string(&Compatibility::FullTransitive).unwrap_or_default();
        assert_eq!(json, "\"FULL_TRANSITIVE\"");
        let back: Compatibility = serde_json::from_str("\"FORWARD\"").unwrap_or_default();
        assert_eq!(back, Compatibility::Forward);
    }

    /// (level, new, previous, expected compatible)
    #[test]
    fn decision_table() {
        use Compatibility::*;
        let cases: &[(Compatibility, &str, &[&str], bool)] = &[
            // No previous versions: always fine.
            (Backward, WITHOUT_DEFAULT, &[], true),
            (FullTransitive, WITHOUT_DEFAULT, &[], true),
            // Adding a field with a default.
            (Backward, WITH_DEFAULT, &[V1], true),
            (Forward, WITH_DEFAULT, &[V1], true),
            (Full, WITH_DEFAULT, &[V1], true),
            // Adding a field without a default: old data lacks it.
            (Backward, WITHOUT_DEFAULT, &[V1], false),
            (BackwardTransitive, WITHOUT_DEFAULT, &[V1], false),
            (Forward, WITHOUT_DEFAULT, &[V1], true),
            (Full, WITHOUT_DEFAULT, &[V1], false),
            (None, WITHOUT_DEFAULT, &[V1], true),
            // Removing a field without a default: old readers need it.
            (Backward, V1, &[WITHOUT_DEFAULT], true),
            (Forward, V1, &[WITHOUT_DEFAULT], false),
            (ForwardTransitive, V1, &[WITHOUT_DEFAULT], false),
            (Full, V1, &[WITHOUT_DEFAULT], false),
            // Removing a field that had a default is fully compatible.
            (Full, V1, &[WITH_DEFAULT], true),
            // Type promotion int -> long: new reads old, old cannot read new.
            (Backward, V1, &[INT_ID], true),
            (Forward, V1, &[INT_ID], false),
            (Backward, INT_ID, &[V1], false),
            (Forward, INT_ID, &[V1], true),
            // Changing the primitive type entirely.
            (Backward, r#""string""#, &[r#""int""#], false),
            (None, r#""string""#, &[r#""int""#], true),
            // Renaming the record.
            (
                Backward,
                r#"{"type":"record","name":"Other","fields":[{"name":"id","type":"long"}]}"#,
                &[V1],
                false,
            ),
        ];
        for (i, (level, new, previous, expected)) in cases.iter().enumerate() {
            assert_eq!(
                decide(*level, new, previous),
                *expected,
                "case {i}: {level} new={new} previous={previous:?}"
            );
        }
    }

    #[test]
    fn transitive_checks_all_versions_plain_only_the_latest() {
        // v1: {id}, v2: {} (removes id), new: {id without default} again.
        // Against v2 only (BACKWARD): new needs `id`, v2 data lacks it -> incompatible.
        // Use a sequence where latest is fine and an older one is not:
        // v1 = EMPTY, v2 = WITH_DEFAULT, new = WITHOUT_DEFAULT.
        // BACKWARD against v2: new reads v2 data (email present) -> ok.
        // BACKWARD_TRANSITIVE against v1: v1 data lacks email, no default -> incompatible.
        assert!(decide(
            Compatibility::Backward,
            WITHOUT_DEFAULT,
            &[EMPTY, WITH_DEFAULT]
        ));
        assert!(!decide(
            Compatibility::BackwardTransitive,
            WITHOUT_DEFAULT,
            &[EMPTY, WITH_DEFAULT]
        ));
        // FORWARD: v2 = WITHOUT_DEFAULT requires email; new = WITH_DEFAULT provides it.
        // v1 = EMPTY reads anything. Latest and transitive both fine.
        assert!(decide(
            Compatibility::ForwardTransitive,
            WITH_DEFAULT,
            &[EMPTY, WITHOUT_DEFAULT]
        ));
        // FORWARD_TRANSITIVE: v1 = WITHOUT_DEFAULT needs email; new = V1 drops it.
        // Latest v2 = EMPTY reads anything.
        assert!(decide(Compatibility::Forward, V1, &[WITHOUT_DEFAULT, EMPTY]));
        assert!(!decide(
            Compatibility::ForwardTransitive,
            V1,
            &[WITHOUT_DEFAULT, EMPTY]
        ));
        assert!(!decide(
            Compatibility::FullTransitive,
            V1,
            &[WITHOUT_DEFAULT, EMPTY]
        ));
    }

    #[test]
    fn enum_and_union_partial_results_are_incompatible() {
        let abc = r#"{"type":"enum","name":"E","symbols":["A","B","C"]}"#;
        let ab = r#"{"type":"enum","name":"E","symbols":["A","B"]}"#;
        let ab_default = r#"{"type":"enum","name":"E","symbols":["A","B"],"default":"A"}"#;
        // Adding a symbol: the new reader knows all old symbols.
        assert!(decide(Compatibility::Backward, abc, &[ab]));
        // Removing a symbol without an enum default.
        assert!(!decide(Compatibility::Backward, ab, &[abc]));
        // With an enum default the reader copes.
        assert!(decide(Compatibility::Backward, ab_default, &[abc]));
        // Narrowing a union.
        assert!(!decide(
            Compatibility::Backward,
            r#""string""#,
            &[r#"["null","string"]"#]
        ));
        // Widening a union.
        assert!(decide(
            Compatibility::Backward,
            r#"["null","string"]"#,
            &[r#""string""#]
        ));
    }

    #[test]
    fn reports_error_type_and_version() {
        let new = parse(WITHOUT_DEFAULT);
        let old = parse(V1);
        let problems = check(
            Compatibility::Backward,
            &new,
            &[Previous {
                version: 3,
                schema: &old,
            }],
        );
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].error_type, "READER_FIELD_MISSING_DEFAULT_VALUE");
        assert_eq!(problems[0].old_version, 3);
        assert!(problems[0].description.contains("email"), "{problems:?}");
    }
}
