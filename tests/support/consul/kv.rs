//! `/v1/kv/<key>`: GET (single, `recurse`, `keys` + `separator`, `raw`),
//! PUT (`flags`, `cas`) and DELETE (`recurse`, `cas`), as §1 describes.

use http::{Response, StatusCode};
use serde_json::{Value, json};

use super::acl::{Access, Resource};
use super::blocking::{MetaStyle, Outcome, ReadRequest};
use super::render;
use super::router::Ctx;
use super::wire::{ApiError, Body, json_response};

/// `kv_max_value_size` default.
pub const MAX_VALUE_SIZE: usize = 512 * 1024;

pub fn body_too_large(length: usize) -> ApiError {
    ApiError::with_status(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!(
            "Request body({length} bytes) too large, max size: {MAX_VALUE_SIZE} bytes. See https://developer.hashicorp.com/docs/agent/config/config-files#kv_max_value_size."
        ),
    )
}

pub async fn handle(ctx: &Ctx, key: &str) -> Result<Response<Body>, ApiError> {
    match ctx.method.as_str() {
        "PUT" => put(ctx, key),
        "DELETE" => delete(ctx, key),
        _ => get(ctx, key).await,
    }
}

fn missing_key() -> ApiError {
    ApiError::bad_request("Missing key name")
}

fn conflicting_flags(ctx: &Ctx) -> ApiError {
    ApiError::bad_request(format!(
        "Conflicting flags: {}\n",
        ctx.query.encode_sorted()
    ))
}

/// A numeric query parameter; Consul answers a bad one with Go's error, 500.
fn uint_param(ctx: &Ctx, name: &str) -> Result<Option<u64>, ApiError> {
    if !ctx.query.has(name) {
        return Ok(None);
    }
    let text = ctx.query.get(name).unwrap_or("");
    // Parsed by the HTTP layer, so never given the RPC prefix.
    text.parse::<u64>().map(Some).map_err(|_| {
        ApiError::with_status(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("strconv.ParseUint: parsing {text:?}: invalid syntax"),
        )
    })
}

async fn get(ctx: &Ctx, key: &str) -> Result<Response<Body>, ApiError> {
    let keys = ctx.query.has("keys");
    let recurse = ctx.query.has("recurse");
    if key.is_empty() && !keys && !recurse {
        return Err(missing_key());
    }
    let read = ReadRequest::prepare(ctx, MetaStyle::Kv)?;
    if keys {
        let separator = ctx
            .query
            .get("separator")
            .or_else(|| ctx.query.get("seperator"))
            .unwrap_or("")
            .to_string();
        return read
            .serve(|st, authz| {
                let mut names: Vec<String> = Vec::new();
                for (name, _) in st.kv.with_prefix(key) {
                    let grouped = match name[key.len()..].find(separator.as_str()) {
                        Some(at) if !separator.is_empty() => {
                            &name[..key.len() + at + separator.len()]
                        }
                        _ => name.as_str(),
                    };
                    if names.last().map(String::as_str) != Some(grouped) {
                        names.push(grouped.to_string());
                    }
                }
                let total = names.len();
                names.retain(|name| authz.can_read(Resource::Key, name));
                let index = st.kv.prefix_index(key);
                let outcome = if names.is_empty() && !key.is_empty() {
                    Outcome::not_found(index)
                } else {
                    Outcome::json(index, json!(names))
                };
                outcome.filtered(names.len() != total)
            })
            .await;
    }
    if recurse {
        return read
            .serve(|st, authz| {
                let matching: Vec<_> = st.kv.with_prefix(key).collect();
                let entries: Vec<Value> = matching
                    .iter()
                    .filter(|(name, _)| authz.can_read(Resource::Key, name))
                    .map(|(name, entry)| render::kv_entry(name, entry))
                    .collect();
                let hidden = entries.len() != matching.len();
                let index = st.kv.prefix_index(key);
                let outcome = if entries.is_empty() {
                    Outcome::not_found(index)
                } else {
                    Outcome::json(index, Value::Array(entries))
                };
                outcome.filtered(hidden)
            })
            .await;
    }
    read.authz.require(Resource::Key, key, Access::Read)?;
    let raw = ctx.query.has("raw");
    read.serve(|st, _| match st.kv.get(key) {
        Some(entry) if raw => Outcome::raw(entry.modify_index, entry.value.clone()),
        Some(entry) => Outcome::json(
            entry.modify_index,
            Value::Array(vec![render::kv_entry(key, entry)]),
        ),
        None => Outcome::not_found(st.kv.high_water()),
    })
    .await
}

fn put(ctx: &Ctx, key: &str) -> Result<Response<Body>, ApiError> {
    if key.is_empty() {
        return Err(missing_key());
    }
    let locking = ["cas", "acquire", "release"]
        .iter()
        .filter(|name| ctx.query.has(name))
        .count();
    if locking > 1 {
        return Err(conflicting_flags(ctx));
    }
    let flags = uint_param(ctx, "flags")?.unwrap_or(0);
    let cas = uint_param(ctx, "cas")?;
    if ctx.body.len() > MAX_VALUE_SIZE {
        return Err(body_too_large(ctx.body.len()));
    }
    ctx.check_datacenter()?;
    ctx.authz()?.require(Resource::Key, key, Access::Write)?;
    ctx.require_leader()?;
    // Sessions are not implemented, so no session exists to lock with.
    for lock in ["acquire", "release"] {
        if ctx.query.has(lock) {
            let session = ctx.query.get(lock).unwrap_or("");
            return Err(if session.is_empty() {
                ApiError::internal("missing session")
            } else {
                ApiError::internal(format!("invalid session {session:?}"))
            });
        }
    }
    let bump_identical = ctx.shared.options.bump_identical_writes;
    let value = ctx.body.clone();
    let applied = ctx.shared.write(|st| {
        st.commit_raft(|st, index| {
            let allowed = match (cas, st.kv.get(key)) {
                (None, _) => true,
                (Some(0), existing) => existing.is_none(),
                (Some(n), Some(existing)) => existing.modify_index == n,
                (Some(_), None) => false,
            };
            if !allowed {
                return (false, false);
            }
            let changed = st.kv.put(key, value, flags, index, bump_identical);
            (true, changed)
        })
    });
    Ok(json_response(&Value::Bool(applied), ctx.pretty()))
}

fn delete(ctx: &Ctx, key: &str) -> Result<Response<Body>, ApiError> {
    let recurse = ctx.query.has("recurse");
    if key.is_empty() && !recurse {
        return Err(missing_key());
    }
    if recurse && ctx.query.has("cas") {
        return Err(conflicting_flags(ctx));
    }
    let cas = uint_param(ctx, "cas")?;
    ctx.check_datacenter()?;
    let authz = ctx.authz()?;
    if recurse {
        if !authz.can_write_prefix(Resource::Key, key) {
            authz.require(Resource::Key, key, Access::Write)?;
            return Err(ApiError::forbidden(format!(
                "Permission denied: token lacks permission 'key:write' on {key:?} and everything under it"
            )));
        }
    } else {
        authz.require(Resource::Key, key, Access::Write)?;
    }
    ctx.require_leader()?;
    let deleted = ctx.shared.write(|st| {
        st.commit_raft(|st, index| {
            if recurse {
                return (true, st.kv.delete_prefix(key, index));
            }
            match (cas, st.kv.get(key)) {
                (Some(n), Some(existing)) if existing.modify_index != n => (false, false),
                _ => (true, st.kv.delete(key, index)),
            }
        })
    });
    Ok(json_response(&Value::Bool(deleted), ctx.pretty()))
}
