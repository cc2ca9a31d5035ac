//! Test fixture, not shipped: the next version of crm-to-shop, the
//! candidate of the shadow tests. It maps every account as the shipped
//! one does but one: a `CLIENT_INACTIVE` account gets status 90 (a new
//! code of the shop) instead of its code in `status_codes`. Beside the
//! shipped version, exactly those messages differ, at
//! `actions[0].args.status`.

use passerelle_guest::{Action, CodeTable, Failure, Message, call, transform};
use serde::{Deserialize, Serialize};

/// The status the candidate gives an inactive account.
const INACTIVE_STATUS: i64 = 90;

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
    let status = match account.status.as_str() {
        "CLIENT_INACTIVE" => INACTIVE_STATUS,
        other => statuses.code("Status__c", other)?,
    };
    let args = UpsertBusiness {
        crm_id: &account.id,
        business: Business { name: &account.name },
        status,
        country: Country {
            id: countries.code("Country__c", &account.country)?,
        },
    };
    Ok(vec![call("shop", "upsertBusiness", &args)?])
}

transform!(map);
