// The crm-to-shop mapping in JavaScript, the same as transforms/crm-to-shop
// (Rust): a CRM account change becomes one `upsertBusiness` call on the shop
// endpoint, and fixtures.json is the same file.
//
// {"Id": "gg-11", "Name": "Eleven Labs", "Status__c": "CLIENT_ACTIVE", "Country__c": "FR"}
// becomes the args
// {"crmId": "gg-11", "business": {"name": "Eleven Labs"}, "status": 70, "country": {"id": 76}}.
//
// Status and country codes come from the route's configuration, each a JSON
// object of names to codes: `status_codes` (default {"CLIENT_ACTIVE": 70})
// and `country_ids` (default {"FR": 76}). A configured table replaces its
// default whole, so it must list every value in use. An unknown status or
// country rejects the message (it is dead-lettered), never maps silently.

import { asTransform, call, CodeTable, log, reject } from "@passerelle/guest";

/** The CRM account fields this mapping reads (others are ignored). */
const ACCOUNT = { Id: "string", Name: "string", Status__c: "string", Country__c: "string" };

function map(msg) {
  const account = msg.json(ACCOUNT);
  const statuses = CodeTable.fromConfig("status_codes", { CLIENT_ACTIVE: 70 });
  const countries = CodeTable.fromConfig("country_ids", { FR: 76 });
  const args = upsertBusiness(account, statuses, countries);
  log.debug(
    () =>
      `account ${account.Id}: status ${account.Status__c} -> ${args.status}, country ${account.Country__c} -> ${args.country.id}`,
  );
  return [call("shop", "upsertBusiness", args)];
}

/** The args of the shop's `upsertBusiness` operation. */
export function upsertBusiness(account, statuses, countries) {
  nonEmpty("Id", account.Id);
  nonEmpty("Name", account.Name);
  return {
    crmId: account.Id,
    business: { name: account.Name },
    status: statuses.code("Status__c", account.Status__c),
    country: { id: countries.code("Country__c", account.Country__c) },
  };
}

/** Rejects an empty (or blank) required field. */
function nonEmpty(field, value) {
  if (value.trim() === "") throw reject(`body: field \`${field}\` is empty`);
}

export const transform = asTransform(map);
