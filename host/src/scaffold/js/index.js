// {{name}}: a Passerelle transform. It turns one broker message into the
// actions Passerelle performs: calls to operations declared in the host's
// configuration, or publishes.
//
// This example maps a CRM account to the shop's `upsertBusiness` call:
//
// {"Id": "acc-1", "Name": "Acme", "Status__c": "CLIENT_ACTIVE"} becomes
// shop.upsertBusiness with the args
// {"crmId": "acc-1", "business": {"name": "Acme"}, "status": 70}.
//
// Edit `map`, keep fixtures.json in step (it is the check the host runs
// before it swaps a new version in), then `npm run build` (README.md).

import { asTransform, call, CodeTable, log, reject } from "@passerelle/guest";

/** The fields of the message body this mapping reads (others are ignored). */
const ACCOUNT = { Id: "string", Name: "string", Status__c: "string" };

function map(msg) {
  // A body that is not JSON, or lacks a field, is rejected naming it.
  const account = msg.json(ACCOUNT);
  if (account.Id.trim() === "") {
    // A reject is permanent: the message is dead-lettered with the reason.
    throw reject("body: field `Id` is empty");
  }
  // Names to codes: the route's `status_codes` config value (a JSON object)
  // when it is set, else these defaults. An unknown name is rejected, naming
  // the field and the value.
  const statuses = CodeTable.fromConfig("status_codes", { CLIENT_ACTIVE: 70, CLIENT_INACTIVE: 80 });
  const status = statuses.code("Status__c", account.Status__c);
  log.debug(`account ${account.Id}: status ${account.Status__c} -> ${status}`);
  // The args: one field per parameter the host's configuration declares for
  // the operation.
  const args = { crmId: account.Id, business: { name: account.Name }, status };
  return [call("shop", "upsertBusiness", args)];
}

export const transform = asTransform(map);
