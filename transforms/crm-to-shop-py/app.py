"""The crm-to-shop mapping in Python, the same as transforms/crm-to-shop
(Rust): a CRM account change becomes one ``upsertBusiness`` call on the shop
endpoint, and fixtures.json is the same file.

``{"Id": "gg-11", "Name": "Eleven Labs", "Status__c": "CLIENT_ACTIVE", "Country__c": "FR"}``
becomes the args
``{"crmId": "gg-11", "business": {"name": "Eleven Labs"}, "status": 70, "country": {"id": 76}}``.

Status and country codes come from the route's configuration, each a JSON
object of names to codes: ``status_codes`` (default ``{"CLIENT_ACTIVE": 70}``)
and ``country_ids`` (default ``{"FR": 76}``). A configured table replaces its
default whole, so it must list every value in use. An unknown status or
country rejects the message (it is dead-lettered), never maps silently.
"""

from dataclasses import dataclass

from passerelle_guest import CodeTable, Message, as_transform, call, log, reject


@dataclass
class Account:
    """The CRM account fields this mapping reads (others are ignored)."""

    Id: str
    Name: str
    Status__c: str
    Country__c: str


def map_account(msg: Message) -> list:
    account = msg.json(Account)
    statuses = CodeTable.from_config("status_codes", {"CLIENT_ACTIVE": 70})
    countries = CodeTable.from_config("country_ids", {"FR": 76})
    args = upsert_business(account, statuses, countries)
    log.debug(
        lambda: f"account {account.Id}: status {account.Status__c} -> {args['status']}, "
        f"country {account.Country__c} -> {args['country']['id']}"
    )
    return [call("shop", "upsertBusiness", args)]


def upsert_business(account: Account, statuses: CodeTable, countries: CodeTable) -> dict:
    """The args of the shop's ``upsertBusiness`` operation."""
    non_empty("Id", account.Id)
    non_empty("Name", account.Name)
    return {
        "crmId": account.Id,
        "business": {"name": account.Name},
        "status": statuses.code("Status__c", account.Status__c),
        "country": {"id": countries.code("Country__c", account.Country__c)},
    }


def non_empty(field: str, value: str) -> None:
    """Rejects an empty (or blank) required field."""
    if not value.strip():
        raise reject(f"body: field `{field}` is empty")


WitWorld = as_transform(map_account)
