//! {{name}}: a Passerelle transform. It turns one broker message into the
//! actions Passerelle performs: calls to operations declared in the host's
//! configuration, or publishes.
//!
//! This example maps a CRM account to the shop's `upsertBusiness` call:
//!
//! `{"Id": "acc-1", "Name": "Acme", "Status__c": "CLIENT_ACTIVE"}` becomes
//! `shop.upsertBusiness` with the args
//! `{"crmId": "acc-1", "business": {"name": "Acme"}, "status": 70}`.
//!
//! Edit `map`, keep `fixtures.json` in step (it is the check the host runs
//! before it swaps a new version in), then build (README.md).

use passerelle_guest::{Action, CodeTable, Failure, Message, call, log, reject, transform};
use serde::{Deserialize, Serialize};

/// The fields of the message body this mapping reads (others are ignored).
#[derive(Deserialize)]
struct Account {
    #[serde(rename = "Id")]
    id: String,
    #[serde(rename = "Name")]
    name: String,
    #[serde(rename = "Status__c")]
    status: String,
}

/// The args of the shop's `upsertBusiness` call: one field per parameter
/// the host's configuration declares for that operation.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct UpsertBusiness<'a> {
    crm_id: &'a str,
    business: Business<'a>,
    status: i64,
}

#[derive(Serialize)]
struct Business<'a> {
    name: &'a str,
}

fn map(msg: Message) -> Result<Vec<Action>, Failure> {
    // A body that is not JSON, or lacks a field, is rejected naming it.
    let account: Account = msg.json()?;
    if account.id.trim().is_empty() {
        // A reject is permanent: the message is dead-lettered with the reason.
        return Err(reject("body: field `Id` is empty"));
    }
    // Names to codes: the route's `status_codes` config value (a JSON
    // object) when it is set, else these defaults. An unknown name is
    // rejected, naming the field and the value.
    let defaults = [("CLIENT_ACTIVE", 70), ("CLIENT_INACTIVE", 80)];
    let statuses = CodeTable::from_config("status_codes", &defaults)?;
    let status = statuses.code("Status__c", &account.status)?;
    log::debug(format_args!("account {}: status {status}", account.id));
    let business = Business {
        name: &account.name,
    };
    let args = UpsertBusiness {
        crm_id: &account.id,
        business,
        status,
    };
    Ok(vec![call("shop", "upsertBusiness", &args)?])
}

transform!(map);
