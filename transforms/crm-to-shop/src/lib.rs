//! The shipped CRM → shop mapping: a CRM account change becomes one
//! `upsertBusiness` call on the shop endpoint.
//!
//! `{"Id": "gg-11", "Name": "Eleven Labs", "Status__c": "CLIENT_ACTIVE", "Country__c": "FR"}`
//! becomes the args
//! `{"crmId": "gg-11", "business": {"name": "Eleven Labs"}, "status": 70, "country": {"id": 76}}`.
//!
//! Status and country codes come from the route's configuration, each a JSON
//! object of names to codes: `status_codes` (default `{"CLIENT_ACTIVE": 70}`)
//! and `country_ids` (default `{"FR": 76}`). A configured table replaces its
//! default whole, so it must list every value in use. An unknown status or
//! country rejects the message (it is dead-lettered), never maps silently.

use passerelle_guest::{Action, CodeTable, Failure, Message, call, log, reject, transform};
use serde::{Deserialize, Serialize};

/// The CRM account fields this mapping reads (others are ignored).
#[derive(Deserialize)]
struct Account {
    #[serde(rename = "Id")]
    id: String,
    #[serde(rename = "Name")]
    name: String,
    #[serde(rename = "Status__c")]
    status: String,
    #[serde(rename = "Country__c")]
    country: String,
}

/// The args of the shop's `upsertBusiness` operation.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct UpsertBusiness<'a> {
    crm_id: &'a str,
    business: Business<'a>,
    status: i64,
    country: Country,
}

#[derive(Serialize)]
struct Business<'a> {
    name: &'a str,
}

#[derive(Serialize)]
struct Country {
    id: i64,
}

fn map(msg: Message) -> Result<Vec<Action>, Failure> {
    let account: Account = msg.json()?;
    let statuses = CodeTable::from_config("status_codes", &[("CLIENT_ACTIVE", 70)])?;
    let countries = CodeTable::from_config("country_ids", &[("FR", 76)])?;
    let args = upsert_business(&account, &statuses, &countries)?;
    log::debug(format_args!(
        "account {}: status {} -> {}, country {} -> {}",
        account.id, account.status, args.status, account.country, args.country.id
    ));
    Ok(vec![call("shop", "upsertBusiness", &args)?])
}

/// The pure mapping, apart from the host calls so that it tests natively.
fn upsert_business<'a>(
    account: &'a Account,
    statuses: &CodeTable,
    countries: &CodeTable,
) -> Result<UpsertBusiness<'a>, Failure> {
    non_empty("Id", &account.id)?;
    non_empty("Name", &account.name)?;
    Ok(UpsertBusiness {
        crm_id: &account.id,
        business: Business { name: &account.name },
        status: statuses.code("Status__c", &account.status)?,
        country: Country {
            id: countries.code("Country__c", &account.country)?,
        },
    })
}

/// Rejects an empty (or blank) required field.
fn non_empty(field: &str, value: &str) -> Result<(), Failure> {
    if value.trim().is_empty() {
        return Err(reject(format!("body: field `{field}` is empty")));
    }
    Ok(())
}

transform!(map);

#[cfg(test)]
mod tests {
    use super::*;
    use passerelle_guest::decode_json;
    use std::collections::BTreeMap;

    fn table(key: &str, pairs: &[(&str, i64)]) -> CodeTable {
        let codes = pairs
            .iter()
            .map(|&(n, c)| (n.to_owned(), c))
            .collect::<BTreeMap<_, _>>();
        CodeTable::new(key, codes)
    }

    fn args(body: &str) -> Result<String, Failure> {
        let account: Account = decode_json("body", body.as_bytes()).map_err(reject)?;
        let statuses = table("status_codes", &[("CLIENT_ACTIVE", 70)]);
        let countries = table("country_ids", &[("FR", 76)]);
        let args = upsert_business(&account, &statuses, &countries)?;
        Ok(serde_json::to_string(&args).unwrap())
    }

    #[test]
    fn maps_the_domain_example() {
        let body = r#"{"Id": "gg-11", "Name": "Eleven Labs", "Status__c": "CLIENT_ACTIVE", "Country__c": "FR"}"#;
        assert_eq!(
            args(body).unwrap(),
            r#"{"crmId":"gg-11","business":{"name":"Eleven Labs"},"status":70,"country":{"id":76}}"#
        );
    }

    #[test]
    fn rejects_unknown_values_naming_field_and_value() {
        let body = r#"{"Id": "gg-11", "Name": "E", "Status__c": "CLIENT_GONE", "Country__c": "FR"}"#;
        assert_eq!(
            args(body),
            Err(reject(r#"unknown Status__c "CLIENT_GONE": not in status_codes"#))
        );
        let body = r#"{"Id": "gg-11", "Name": "E", "Status__c": "CLIENT_ACTIVE", "Country__c": "XX"}"#;
        assert_eq!(
            args(body),
            Err(reject(r#"unknown Country__c "XX": not in country_ids"#))
        );
    }

    #[test]
    fn rejects_missing_or_empty_names_and_ids() {
        let body = r#"{"Id": "gg-11", "Status__c": "CLIENT_ACTIVE", "Country__c": "FR"}"#;
        assert_eq!(args(body), Err(reject("body: missing field `Name`")));
        let body = r#"{"Id": "", "Name": "E", "Status__c": "CLIENT_ACTIVE", "Country__c": "FR"}"#;
        assert_eq!(args(body), Err(reject("body: field `Id` is empty")));
    }
}
