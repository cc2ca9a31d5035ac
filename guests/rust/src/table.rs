//! Name ↔ code tables read from a route's configuration, e.g. the shop's
//! status codes (`{"CLIENT_ACTIVE": 70}`): mappings look names up one way,
//! the reverse mappings the other way, and both reject what is not there.

use crate::{Failure, config, reject};
use std::collections::BTreeMap;

/// A table of names to integer codes, from the configuration key it was read
/// from (the key is named in every reject reason).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CodeTable {
    key: String,
    codes: BTreeMap<String, i64>,
}

impl CodeTable {
    /// Reads the table at configuration `key`: a JSON object of names to
    /// integers. When the key is absent the table is `default`; a configured
    /// table replaces the default whole (it is not merged with it).
    pub fn from_config(key: &str, default: &[(&str, i64)]) -> Result<Self, Failure> {
        Self::parse(key, config(key).as_deref(), default)
    }

    /// A table built from `codes`, as if read from configuration `key`.
    pub fn new(key: &str, codes: BTreeMap<String, i64>) -> Self {
        let key = key.to_owned();
        Self { key, codes }
    }

    /// The pure part of [`CodeTable::from_config`].
    fn parse(key: &str, value: Option<&str>, default: &[(&str, i64)]) -> Result<Self, Failure> {
        let default = || default.iter().map(|&(n, c)| (n.to_owned(), c)).collect();
        Ok(Self::new(key, crate::parse_config(key, value, default)?))
    }

    /// The code of `name`, read from message field `field`; an unknown name is
    /// a reject like `unknown Status__c "CLIENT_GONE": not in status_codes`.
    pub fn code(&self, field: &str, name: &str) -> Result<i64, Failure> {
        self.codes
            .get(name)
            .copied()
            .ok_or_else(|| reject(format!("unknown {field} {name:?}: not in {}", self.key)))
    }

    /// The one name of `code`, read from message field `field`; an unknown
    /// code is a reject like `unknown status 71: not in status_codes`, and so
    /// is a code that several names share (the reverse is ambiguous).
    pub fn name(&self, field: &str, code: i64) -> Result<&str, Failure> {
        let names: Vec<&str> = self
            .codes
            .iter()
            .filter(|&(_, &c)| c == code)
            .map(|(n, _)| n.as_str())
            .collect();
        match names[..] {
            [name] => Ok(name),
            [] => Err(reject(format!("unknown {field} {code}: not in {}", self.key))),
            _ => Err(reject(format!(
                "ambiguous {field} {code}: {} maps {} to it",
                self.key,
                quoted_list(&names)
            ))),
        }
    }
}

/// `"A", "B" and "C"`.
fn quoted_list(names: &[&str]) -> String {
    let quoted: Vec<String> = names.iter().map(|n| format!("{n:?}")).collect();
    match quoted.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} and {last}", rest.join(", ")),
        _ => quoted.concat(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &[(&str, i64)] = &[("CLIENT_ACTIVE", 70)];

    #[test]
    fn absent_is_the_default() {
        let table = CodeTable::parse("status_codes", None, STATUS).unwrap();
        assert_eq!(table.code("Status__c", "CLIENT_ACTIVE"), Ok(70));
        assert_eq!(table.name("status", 70), Ok("CLIENT_ACTIVE"));
    }

    #[test]
    fn configured_replaces_the_default() {
        let table = CodeTable::parse("status_codes", Some(r#"{"PROSPECT": 10}"#), STATUS).unwrap();
        assert_eq!(table.code("Status__c", "PROSPECT"), Ok(10));
        assert_eq!(
            table.code("Status__c", "CLIENT_ACTIVE"),
            Err(reject(r#"unknown Status__c "CLIENT_ACTIVE": not in status_codes"#))
        );
    }

    #[test]
    fn unknown_codes_are_rejected_naming_field_and_value() {
        let table = CodeTable::parse("status_codes", None, STATUS).unwrap();
        assert_eq!(
            table.name("status", 71),
            Err(reject("unknown status 71: not in status_codes"))
        );
    }

    #[test]
    fn shared_codes_are_ambiguous_in_reverse() {
        let config = r#"{"ACTIVE": 70, "CLIENT_ACTIVE": 70, "LIVE": 70, "PROSPECT": 10}"#;
        let table = CodeTable::parse("status_codes", Some(config), STATUS).unwrap();
        assert_eq!(table.code("Status__c", "ACTIVE"), Ok(70));
        assert_eq!(table.name("status", 10), Ok("PROSPECT"));
        assert_eq!(
            table.name("status", 70),
            Err(reject(
                r#"ambiguous status 70: status_codes maps "ACTIVE", "CLIENT_ACTIVE" and "LIVE" to it"#
            ))
        );
    }

    #[test]
    fn a_bad_table_is_rejected_naming_the_key() {
        assert_eq!(
            CodeTable::parse("status_codes", Some(r#"["CLIENT_ACTIVE"]"#), STATUS),
            Err(reject("config `status_codes`: invalid type: sequence, expected a map"))
        );
    }
}
