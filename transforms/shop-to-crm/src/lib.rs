//! The shipped shop → CRM mapping: a shop business event (the shop's body
//! plus the CRM id) becomes one `updateAccount` call on the Salesforce
//! endpoint.
//!
//! `{"crmId": "gg-11", "business": {"name": "Eleven Labs"}, "status": 70, "country": {"id": 76}}`
//! becomes the args
//! `{"accountId": "gg-11", "Name": "Eleven Labs", "Status__c": "CLIENT_ACTIVE", "Country__c": "FR"}`.
//!
//! It reads the same configuration tables as crm-to-shop, reversed:
//! `status_codes` (default `{"CLIENT_ACTIVE": 70}`) and `country_ids`
//! (default `{"FR": 76}`); a configured table replaces its default whole. An
//! unknown code rejects the message, and so does a code that two names share
//! (the reverse mapping would have to guess).

use passerelle_guest::{Action, CodeTable, Failure, Message, call, log, reject, transform};
use serde::{Deserialize, Serialize};

/// The shop business event fields this mapping reads (others are ignored).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct BusinessEvent {
    crm_id: String,
    business: Business,
    status: i64,
    country: Country,
}

#[derive(Deserialize)]
struct Business {
    name: String,
}

#[derive(Deserialize)]
struct Country {
    id: i64,
}

/// The args of the CRM's `updateAccount` operation.
#[derive(Serialize)]
struct UpdateAccount<'a> {
    #[serde(rename = "accountId")]
    account_id: &'a str,
    #[serde(rename = "Name")]
    name: &'a str,
    #[serde(rename = "Status__c")]
    status: &'a str,
    #[serde(rename = "Country__c")]
    country: &'a str,
}

fn map(msg: Message) -> Result<Vec<Action>, Failure> {
    let event: BusinessEvent = msg.json()?;
    let statuses = CodeTable::from_config("status_codes", &[("CLIENT_ACTIVE", 70)])?;
    let countries = CodeTable::from_config("country_ids", &[("FR", 76)])?;
    let args = update_account(&event, &statuses, &countries)?;
    log::debug(format_args!(
        "business {}: status {} -> {}, country {} -> {}",
        event.crm_id, event.status, args.status, event.country.id, args.country
    ));
    Ok(vec![call("salesforce", "updateAccount", &args)?])
}

/// The pure mapping, apart from the host calls so that it tests natively.
fn update_account<'a>(
    event: &'a BusinessEvent,
    statuses: &'a CodeTable,
    countries: &'a CodeTable,
) -> Result<UpdateAccount<'a>, Failure> {
    non_empty("crmId", &event.crm_id)?;
    non_empty("business.name", &event.business.name)?;
    Ok(UpdateAccount {
        account_id: &event.crm_id,
        name: &event.business.name,
        status: statuses.name("status", event.status)?,
        country: countries.name("country.id", event.country.id)?,
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

    fn args_with(body: &str, statuses: &[(&str, i64)]) -> Result<String, Failure> {
        let event: BusinessEvent = decode_json("body", body.as_bytes()).map_err(reject)?;
        let statuses = table("status_codes", statuses);
        let countries = table("country_ids", &[("FR", 76)]);
        let args = update_account(&event, &statuses, &countries)?;
        Ok(serde_json::to_string(&args).unwrap())
    }

    fn args(body: &str) -> Result<String, Failure> {
        args_with(body, &[("CLIENT_ACTIVE", 70)])
    }

    #[test]
    fn maps_the_domain_example() {
        let body = r#"{"crmId": "gg-11", "business": {"name": "Eleven Labs"}, "status": 70, "country": {"id": 76}}"#;
        assert_eq!(
            args(body).unwrap(),
            r#"{"accountId":"gg-11","Name":"Eleven Labs","Status__c":"CLIENT_ACTIVE","Country__c":"FR"}"#
        );
    }

    #[test]
    fn rejects_unknown_codes_naming_field_and_value() {
        let body = r#"{"crmId": "gg-11", "business": {"name": "E"}, "status": 71, "country": {"id": 76}}"#;
        assert_eq!(args(body), Err(reject("unknown status 71: not in status_codes")));
        let body = r#"{"crmId": "gg-11", "business": {"name": "E"}, "status": 70, "country": {"id": 99}}"#;
        assert_eq!(args(body), Err(reject("unknown country.id 99: not in country_ids")));
    }

    #[test]
    fn rejects_a_code_two_names_share() {
        let body = r#"{"crmId": "gg-11", "business": {"name": "E"}, "status": 70, "country": {"id": 76}}"#;
        assert_eq!(
            args_with(body, &[("ACTIVE", 70), ("CLIENT_ACTIVE", 70)]),
            Err(reject(
                r#"ambiguous status 70: status_codes maps "ACTIVE" and "CLIENT_ACTIVE" to it"#
            ))
        );
    }

    #[test]
    fn rejects_missing_or_empty_ids_and_names() {
        let body = r#"{"business": {"name": "E"}, "status": 70, "country": {"id": 76}}"#;
        assert_eq!(args(body), Err(reject("body: missing field `crmId`")));
        let body = r#"{"crmId": "gg-11", "business": {}, "status": 70, "country": {"id": 76}}"#;
        assert_eq!(args(body), Err(reject("body: business: missing field `name`")));
        let body = r#"{"crmId": "gg-11", "business": {"name": " "}, "status": 70, "country": {"id": 76}}"#;
        assert_eq!(args(body), Err(reject("body: field `business.name` is empty")));
    }
}
