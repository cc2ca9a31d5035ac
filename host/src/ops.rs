//! Operator commands, shared by the command line and the admin API: a
//! route's dead letters (`dlq`: list, replay, purge) and its transform on
//! every host at once (`deploy`: deploy, rollback). They talk to the
//! broker only, so they never need the endpoints' secrets.

pub mod deploy;
pub mod dlq;
