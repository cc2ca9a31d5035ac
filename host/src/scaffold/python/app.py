"""{{name}}: a Passerelle transform. It turns one broker message into the
actions Passerelle performs: calls to operations declared in the host's
configuration, or publishes.

This example maps a CRM account to the shop's ``upsertBusiness`` call:

``{"Id": "acc-1", "Name": "Acme", "Status__c": "CLIENT_ACTIVE"}`` becomes
``shop.upsertBusiness`` with the args
``{"crmId": "acc-1", "business": {"name": "Acme"}, "status": 70}``.

Edit ``map_account``, keep fixtures.json in step (it is the check the host
runs before it swaps a new version in), then ``./build.sh`` (README.md).
"""

from dataclasses import dataclass

from passerelle_guest import CodeTable, Message, as_transform, call, log, reject


@dataclass
class Account:
    """The fields of the message body this mapping reads (others are ignored)."""

    Id: str
    Name: str
    Status__c: str


def map_account(msg: Message) -> list:
    # A body that is not JSON, or lacks a field, is rejected naming it.
    account = msg.json(Account)
    if not account.Id.strip():
        # A reject is permanent: the message is dead-lettered with the reason.
        raise reject("body: field `Id` is empty")
    # Names to codes: the route's `status_codes` config value (a JSON object)
    # when it is set, else these defaults. An unknown name is rejected, naming
    # the field and the value.
    statuses = CodeTable.from_config("status_codes", {"CLIENT_ACTIVE": 70, "CLIENT_INACTIVE": 80})
    status = statuses.code("Status__c", account.Status__c)
    log.debug(f"account {account.Id}: status {account.Status__c} -> {status}")
    # The args: one field per parameter the host's configuration declares for
    # the operation.
    args = {"crmId": account.Id, "business": {"name": account.Name}, "status": status}
    return [call("shop", "upsertBusiness", args)]


# componentize-py looks for WitWorld: the component's export.
WitWorld = as_transform(map_account)
