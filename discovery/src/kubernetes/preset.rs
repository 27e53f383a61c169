//! Role-label presets: which pod label says primary or replica, per operator.
//!
//! Operators spell the role differently (`role=master`, `spilo-role=master`,
//! `cnpg.io/instanceRole=primary`, …); a [`Preset`] reads one pod's labels into a [`LabelRole`].

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Deserializer};

/// Label key of Patroni's Kubernetes DCS (plain Patroni, StackGres).
pub const PATRONI_LABEL: &str = "role";
/// Label key of Zalando's postgres-operator (Spilo images).
pub const SPILO_LABEL: &str = "spilo-role";
/// Label key of CloudNativePG.
pub const CNPG_LABEL: &str = "cnpg.io/instanceRole";
/// CloudNativePG's deprecated label key, read when [`CNPG_LABEL`] is absent.
pub const CNPG_LEGACY_LABEL: &str = "role";
/// Label key of Crunchy PGO and Percona's operator.
pub const CRUNCHY_LABEL: &str = "postgres-operator.crunchydata.com/role";

/// How pod labels name the role of a Postgres pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Preset {
    /// Patroni: `role` = `primary` (Patroni ≥ 4) or `master` / `replica`.
    Patroni,
    /// Zalando postgres-operator: `spilo-role` = `master` / `replica` (`primary` is read as
    /// primary too).
    Spilo,
    /// CloudNativePG: `cnpg.io/instanceRole` = `primary` / `replica` (`unhealthy` is not
    /// routable), falling back to the deprecated `role` label.
    CloudNativePg,
    /// Crunchy PGO (and Percona): `postgres-operator.crunchydata.com/role` = `master` (Percona:
    /// `primary`) / `replica`.
    Crunchy,
    /// Any label and values.
    Custom(CustomPreset),
}

/// `{ label = "...", primary = [..], replica = [..] }`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustomPreset {
    /// The label key.
    pub label: String,
    /// Values that mean primary.
    pub primary: Vec<String>,
    /// Values that mean replica.
    pub replica: Vec<String>,
}

/// What a pod's labels say about its role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LabelRole {
    /// Labelled primary.
    Primary,
    /// Labelled replica.
    Replica,
    /// The role label has a value that is neither (e.g. CloudNativePG's `unhealthy`):
    /// `key=value`.
    Other(String),
    /// No role label.
    Missing,
}

/// Unknown preset name or malformed custom preset.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PresetError {
    /// A name that is not one of [`Preset::NAMES`] (or their aliases).
    #[error(
        "unknown preset {0:?}: expected one of {names} or a table {{ label, primary, replica }}",
        names = Preset::NAMES.join(", ")
    )]
    UnknownName(String),
    /// A custom preset with an empty `label`.
    #[error("custom preset: label is empty")]
    EmptyLabel,
    /// A custom preset with no `primary` value.
    #[error("custom preset: list at least one primary value")]
    NoPrimaryValue,
    /// A custom preset listing a value under both roles.
    #[error("custom preset: {0:?} is listed as both primary and replica")]
    BothRoles(String),
}

impl Preset {
    /// Names accepted by [`Preset::from_name`].
    pub const NAMES: [&'static str; 4] = ["patroni", "spilo", "cloudnativepg", "crunchy"];

    /// A built-in preset by name.
    pub fn from_name(name: &str) -> Result<Preset, PresetError> {
        match name {
            "patroni" => Ok(Preset::Patroni),
            "spilo" | "zalando" => Ok(Preset::Spilo),
            "cloudnativepg" | "cnpg" => Ok(Preset::CloudNativePg),
            "crunchy" | "percona" => Ok(Preset::Crunchy),
            other => Err(PresetError::UnknownName(other.to_owned())),
        }
    }

    /// A custom preset, checked: a non-empty label and at least one primary value, no value in
    /// both lists.
    pub fn custom(custom: CustomPreset) -> Result<Preset, PresetError> {
        if custom.label.is_empty() {
            return Err(PresetError::EmptyLabel);
        }
        if custom.primary.is_empty() {
            return Err(PresetError::NoPrimaryValue);
        }
        if let Some(v) = custom.primary.iter().find(|v| custom.replica.contains(v)) {
            return Err(PresetError::BothRoles(v.clone()));
        }
        Ok(Preset::Custom(custom))
    }

    /// The role label keys this preset reads, first match wins.
    pub fn label_keys(&self) -> Vec<&str> {
        match self {
            Preset::Patroni => vec![PATRONI_LABEL],
            Preset::Spilo => vec![SPILO_LABEL],
            Preset::CloudNativePg => vec![CNPG_LABEL, CNPG_LEGACY_LABEL],
            Preset::Crunchy => vec![CRUNCHY_LABEL],
            Preset::Custom(c) => vec![c.label.as_str()],
        }
    }

    /// Reads a pod's labels.
    pub fn role_of(&self, labels: Option<&BTreeMap<String, String>>) -> LabelRole {
        let Some((key, value)) = self
            .label_keys()
            .into_iter()
            .find_map(|k| labels?.get_key_value(k))
        else {
            return LabelRole::Missing;
        };
        let (primary, replica): (&[&str], &[&str]) = match self {
            Preset::Patroni | Preset::Spilo | Preset::Crunchy => {
                (&["primary", "master"], &["replica"])
            }
            Preset::CloudNativePg => (&["primary"], &["replica"]),
            Preset::Custom(c) => {
                return if c.primary.contains(value) {
                    LabelRole::Primary
                } else if c.replica.contains(value) {
                    LabelRole::Replica
                } else {
                    LabelRole::Other(format!("{key}={value}"))
                };
            }
        };
        if primary.contains(&value.as_str()) {
            LabelRole::Primary
        } else if replica.contains(&value.as_str()) {
            LabelRole::Replica
        } else {
            LabelRole::Other(format!("{key}={value}"))
        }
    }
}

impl fmt::Display for Preset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Preset::Patroni => f.write_str("patroni"),
            Preset::Spilo => f.write_str("spilo"),
            Preset::CloudNativePg => f.write_str("cloudnativepg"),
            Preset::Crunchy => f.write_str("crunchy"),
            Preset::Custom(c) => write!(f, "custom ({})", c.label),
        }
    }
}

/// A preset as written in TOML: `preset = "patroni"` or
/// `preset = { label = "role", primary = ["leader"], replica = ["follower"] }`.
impl<'de> Deserialize<'de> for Preset {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Preset, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Name(String),
            Custom(CustomPreset),
        }
        let raw = Raw::deserialize(d).map_err(|_| {
            serde::de::Error::custom(
                "preset: expected a name (patroni, spilo, cloudnativepg, crunchy) \
                 or a table { label, primary, replica }",
            )
        })?;
        match raw {
            Raw::Name(name) => Preset::from_name(&name),
            Raw::Custom(custom) => Preset::custom(custom),
        }
        .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn every_preset_reads_its_operators_labels() {
        use LabelRole::*;
        let custom = Preset::custom(CustomPreset {
            label: "replicationRole".into(),
            primary: vec!["primary".into()],
            replica: vec!["replica".into()],
        })
        .unwrap();
        type Case<'a> = (&'a Preset, &'a [(&'a str, &'a str)], LabelRole);
        let table: &[Case] = &[
            (&Preset::Patroni, &[("role", "primary")], Primary),
            (&Preset::Patroni, &[("role", "master")], Primary),
            (&Preset::Patroni, &[("role", "replica")], Replica),
            (
                &Preset::Patroni,
                &[("role", "uninitialized")],
                Other("role=uninitialized".into()),
            ),
            (&Preset::Patroni, &[("spilo-role", "master")], Missing),
            (&Preset::Spilo, &[("spilo-role", "master")], Primary),
            (&Preset::Spilo, &[("spilo-role", "replica")], Replica),
            (&Preset::Spilo, &[("role", "master")], Missing),
            (
                &Preset::CloudNativePg,
                &[("cnpg.io/instanceRole", "primary")],
                Primary,
            ),
            (
                &Preset::CloudNativePg,
                &[("cnpg.io/instanceRole", "replica"), ("role", "primary")],
                Replica,
            ),
            (
                &Preset::CloudNativePg,
                &[("cnpg.io/instanceRole", "unhealthy")],
                Other("cnpg.io/instanceRole=unhealthy".into()),
            ),
            (&Preset::CloudNativePg, &[("role", "primary")], Primary),
            (
                &Preset::CloudNativePg,
                &[("role", "master")],
                Other("role=master".into()),
            ),
            (
                &Preset::Crunchy,
                &[("postgres-operator.crunchydata.com/role", "master")],
                Primary,
            ),
            (
                &Preset::Crunchy,
                &[("postgres-operator.crunchydata.com/role", "replica")],
                Replica,
            ),
            (&custom, &[("replicationRole", "primary")], Primary),
            (&custom, &[("replicationRole", "replica")], Replica),
            (&custom, &[("role", "primary")], Missing),
        ];
        for (preset, pairs, want) in table {
            assert_eq!(
                preset.role_of(Some(&labels(pairs))),
                *want,
                "{preset} {pairs:?}"
            );
        }
        assert_eq!(Preset::Patroni.role_of(None), Missing);
    }

    #[test]
    fn presets_deserialize_from_a_name_or_a_table() {
        #[derive(Deserialize)]
        struct T {
            preset: Preset,
        }
        let parse = |s: &str| serde_json::from_str::<T>(s).map(|t| t.preset);
        assert_eq!(parse(r#"{"preset":"spilo"}"#).unwrap(), Preset::Spilo);
        assert_eq!(
            parse(r#"{"preset":"cloudnativepg"}"#).unwrap(),
            Preset::CloudNativePg
        );
        let custom = parse(r#"{"preset":{"label":"r","primary":["p"],"replica":["s"]}}"#).unwrap();
        assert_eq!(custom.label_keys(), vec!["r"]);
        for (bad, needle) in [
            (r#"{"preset":"stolon"}"#, "unknown preset \"stolon\""),
            (
                r#"{"preset":{"label":"r","primary":[],"replica":[]}}"#,
                "primary value",
            ),
            (
                r#"{"preset":{"label":"r","primary":["x"],"replica":["x"]}}"#,
                "both",
            ),
            (r#"{"preset":{"label":"r"}}"#, "expected a name"),
            (r#"{"preset":7}"#, "expected a name"),
        ] {
            let e = parse(bad).unwrap_err().to_string();
            assert!(e.contains(needle), "{bad}: {e}");
        }
    }
}
