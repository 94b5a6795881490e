//! `api.*` RPC, answered by every agent: the token commands behind `bramble token`, and
//! the dashboard password behind `bramble dashboard --set-password`.
//! Creating and revoking tokens is for administrators (an admin certificate); the secret
//! is drawn here, on the agent, and leaves it once, in the answer.

use std::sync::Arc;

use bramble_meta::Meta;
use bramble_meta::api::Consistency;
use bramble_meta::types::{Command, CommandResult};
use bramble_net::rpc::{Request, encode};
use bramble_net::{Caller, ErrorKind, Handler, RpcError};
use tracing::info;

use crate::ApiError;
use crate::dashboard::password::{PASSWORD_KEY, PasswordRecord, SetPassword};
use crate::tokens::{
    self, CreateToken, CreatedToken, KEY_PREFIX, MAX_TOKENS, TokenInfo, TokenRecord,
};

pub const METHOD_TOKEN_CREATE: &str = "api.token_create";
pub const METHOD_TOKEN_LIST: &str = "api.token_list";
pub const METHOD_TOKEN_REMOVE: &str = "api.token_remove";
pub const METHOD_DASHBOARD_PASSWORD_SET: &str = "api.dashboard_password_set";

pub struct ApiService {
    meta: Arc<Meta>,
}

impl ApiService {
    pub fn new(meta: Arc<Meta>) -> ApiService {
        ApiService { meta }
    }

    async fn records(&self) -> Result<Vec<TokenRecord>, ApiError> {
        let entries = self
            .meta
            .list(
                KEY_PREFIX,
                MAX_TOKENS as u32 + 1,
                Consistency::Linearizable,
                false,
            )
            .await
            .map_err(ApiError::from)?;
        entries
            .into_iter()
            .map(|(key, value)| {
                serde_json::from_slice(&value.value).map_err(|error| {
                    ApiError::Internal(format!("the token record {key} is corrupt: {error}"))
                })
            })
            .collect()
    }

    async fn create(&self, request: CreateToken, admin: &str) -> Result<CreatedToken, ApiError> {
        tokens::validate_token_name(&request.name)?;
        if self.records().await?.len() >= MAX_TOKENS {
            return Err(ApiError::Conflict(format!(
                "the cluster holds {MAX_TOKENS} tokens already; remove some (bramble token ls, bramble token rm)"
            )));
        }
        let now = bramble_util::time::unix_millis();
        let created_by = format!("admin/{admin}");
        let (record, token) =
            tokens::mint(&request.name, &created_by, now, request.expires_in_seconds)?;
        let value = serde_json::to_vec(&record)
            .map_err(|error| ApiError::Internal(format!("encoding a token record: {error}")))?;
        let command = Command::PutIfVersion {
            key: tokens::token_key(&record.name),
            value,
            expected_version: 0,
        };
        match self.meta.write(command, false).await? {
            CommandResult::Written { .. } => {}
            CommandResult::VersionMismatch { .. } => {
                return Err(ApiError::Conflict(format!(
                    "a token named {} exists already; bramble token rm {} first, or pick another name",
                    record.name, record.name
                )));
            }
            other => {
                return Err(ApiError::Internal(format!(
                    "the catalog answered {other:?} to a token's creation"
                )));
            }
        }
        info!(token = %record.name, by = %created_by, "API token created");
        Ok(CreatedToken {
            token,
            info: record.info(now),
        })
    }

    /// Stores a new dashboard password (hashed by the client); every open session ends,
    /// since each remembers the version of the password it was opened under.
    async fn set_dashboard_password(&self, set: SetPassword, admin: &str) -> Result<(), ApiError> {
        let phc = bramble_util::password::check_phc(&set.phc)
            .map_err(|error| ApiError::Invalid(format!("the dashboard password hash: {error}")))?;
        let record = PasswordRecord {
            phc,
            set_by: format!("admin/{admin}"),
            set_unix_ms: bramble_util::time::unix_millis(),
        };
        let value = serde_json::to_vec(&record).map_err(|error| {
            ApiError::Internal(format!("encoding the password record: {error}"))
        })?;
        match self
            .meta
            .write(
                Command::Put {
                    key: PASSWORD_KEY.to_string(),
                    value,
                },
                false,
            )
            .await?
        {
            CommandResult::Written { .. } => {
                info!(by = %record.set_by, "dashboard password set");
                Ok(())
            }
            other => Err(ApiError::Internal(format!(
                "the catalog answered {other:?} to the password's change"
            ))),
        }
    }

    async fn remove(&self, name: &str, admin: &str) -> Result<(), ApiError> {
        tokens::validate_token_name(name)?;
        let command = Command::Delete {
            key: tokens::token_key(name),
        };
        match self.meta.write(command, false).await? {
            CommandResult::Deleted { existed: true } => {
                info!(token = %name, by = %format!("admin/{admin}"), "API token revoked");
                Ok(())
            }
            CommandResult::Deleted { existed: false } => Err(ApiError::NotFound(format!(
                "there is no token named {name} (bramble token ls lists them)"
            ))),
            other => Err(ApiError::Internal(format!(
                "the catalog answered {other:?} to a token's removal"
            ))),
        }
    }
}

fn require_admin<'a>(caller: &'a Caller, what: &str) -> Result<&'a str, RpcError> {
    match caller {
        Caller::Admin(name) => Ok(name),
        _ => Err(RpcError::new(
            ErrorKind::Unauthorized,
            format!("{what} is for the cluster's administrator (an admin credential)"),
        )),
    }
}

#[async_trait::async_trait]
impl Handler for ApiService {
    async fn handle(&self, request: Request<'_>) -> Result<Vec<u8>, RpcError> {
        request.require_authenticated()?;
        match request.method {
            "token_create" => {
                let admin = require_admin(request.caller, "creating an API token")?;
                let create: CreateToken = request.decode()?;
                encode(
                    &self
                        .create(create, admin)
                        .await
                        .map_err(ApiError::into_rpc)?,
                )
            }
            "token_list" => {
                let now = bramble_util::time::unix_millis();
                let infos: Vec<TokenInfo> = self
                    .records()
                    .await
                    .map_err(ApiError::into_rpc)?
                    .iter()
                    .map(|record| record.info(now))
                    .collect();
                encode(&infos)
            }
            "token_remove" => {
                let admin = require_admin(request.caller, "revoking an API token")?;
                let name: String = request.decode()?;
                self.remove(&name, admin)
                    .await
                    .map_err(ApiError::into_rpc)?;
                encode(&())
            }
            "dashboard_password_set" => {
                let admin = require_admin(request.caller, "setting the dashboard password")?;
                let set: SetPassword = request.decode()?;
                self.set_dashboard_password(set, admin)
                    .await
                    .map_err(ApiError::into_rpc)?;
                encode(&())
            }
            other => Err(RpcError::new(
                ErrorKind::NotFound,
                format!("the api service has no method {other:?}"),
            )),
        }
    }
}
