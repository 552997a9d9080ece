//! Registration bodies (§5.1, §5.4) decoded and validated: a service with
//! its checks, or a standalone check. Keys are case-insensitive, snake_case
//! aliases and Go durations are accepted; failures are Consul's `400`s.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use super::catalog_store::CheckStatus;
use super::decode::{Fields, parse_body};
use super::wire::ApiError;

/// `OutputMaxSize` default.
const DEFAULT_OUTPUT_MAX: usize = 4096;

#[derive(Debug, Clone)]
pub struct ServiceDefinition {
    pub id: String,
    pub name: String,
    pub tags: Vec<String>,
    pub address: String,
    pub port: u16,
    pub meta: BTreeMap<String, String>,
    pub tagged_addresses: BTreeMap<String, (String, u16)>,
    pub weights: (u32, u32),
    pub enable_tag_override: bool,
    pub checks: Vec<CheckDefinition>,
}

#[derive(Debug, Clone)]
pub struct CheckDefinition {
    pub id: Option<String>,
    pub name: Option<String>,
    /// `ttl`, `http`, `tcp`, …
    pub check_type: &'static str,
    pub ttl: Option<Duration>,
    pub interval: Option<Duration>,
    pub timeout: Option<Duration>,
    /// `None` = the default, `critical`.
    pub status: Option<CheckStatus>,
    pub notes: String,
    pub deregister_after: Option<Duration>,
    pub output_max: usize,
    /// Standalone checks only: the local service it belongs to.
    pub service_id: Option<String>,
}

fn decode_failed(problem: String) -> ApiError {
    ApiError::bad_request(format!("Request decode failed: {problem}"))
}

/// A field that failed to decode is `400 Request decode failed: …`.
trait Decoded<T> {
    fn decoded(self) -> Result<T, ApiError>;
}

impl<T> Decoded<T> for Result<T, String> {
    fn decoded(self) -> Result<T, ApiError> {
        self.map_err(decode_failed)
    }
}

/// `PUT /v1/agent/service/register`.
pub fn parse_service(body: &[u8]) -> Result<ServiceDefinition, ApiError> {
    let value = parse_body(body).decoded()?;
    decode_service(Fields::of(&value).decoded()?)
}

fn decode_service(f: Fields<'_>) -> Result<ServiceDefinition, ApiError> {
    let name = f.string(&["Name"]).decoded()?.unwrap_or_default();
    let id = f.string(&["ID"]).decoded()?.filter(|id| !id.is_empty());
    let tags = f.strings(&["Tags"]).decoded()?;
    let address = f.string(&["Address"]).decoded()?.unwrap_or_default();
    let port = f.u64(&["Port"]).decoded()?.unwrap_or(0);
    let meta = f.string_map(&["Meta"]).decoded()?;
    let mut tagged_addresses = BTreeMap::new();
    for (tag, entry) in f
        .object_map(&["TaggedAddresses", "tagged_addresses"])
        .decoded()?
    {
        let address = entry.string(&["Address"]).decoded()?.unwrap_or_default();
        let port = entry.u64(&["Port"]).decoded()?.unwrap_or(0);
        tagged_addresses.insert(tag, (address, u16::try_from(port).unwrap_or(0)));
    }
    let weights = match f.object(&["Weights"]).decoded()? {
        None => None,
        Some(w) => Some((
            w.u64(&["Passing"]).decoded()?.unwrap_or(0),
            w.u64(&["Warning"]).decoded()?.unwrap_or(0),
        )),
    };
    let enable_tag_override = f
        .bool(&["EnableTagOverride", "enable_tag_override"])
        .decoded()?
        .unwrap_or(false);
    let mut check_fields = Vec::new();
    if let Some(check) = f.object(&["Check"]).decoded()? {
        check_fields.push(check);
    }
    check_fields.extend(f.objects(&["Checks"]).decoded()?);
    let mut checks = Vec::new();
    for check in check_fields {
        checks.extend(decode_check(check)?);
    }

    // Validation, in Consul's order.
    if name.is_empty() {
        return Err(ApiError::bad_request("Missing service name"));
    }
    let Ok(port) = u16::try_from(port) else {
        return Err(decode_failed(format!("json: port {port} out of range")));
    };
    if let Ok(ip) = address.parse::<IpAddr>()
        && ip.is_unspecified()
    {
        return Err(ApiError::bad_request("Invalid service address"));
    }
    if let Some(problem) = meta_problem(&meta) {
        return Err(ApiError::bad_request(format!(
            "Invalid Service Meta: {problem}"
        )));
    }
    let weights = match weights {
        None => (1, 1),
        Some((0, _)) => {
            return Err(ApiError::bad_request(
                "Invalid Weights: Passing must be greater than 0",
            ));
        }
        Some((passing, warning)) => (
            u32::try_from(passing).unwrap_or(u32::MAX),
            u32::try_from(warning).unwrap_or(u32::MAX),
        ),
    };
    add_default_tagged_addresses(&mut tagged_addresses, &address, port);
    Ok(ServiceDefinition {
        id: id.unwrap_or_else(|| name.clone()),
        name,
        tags,
        address,
        port,
        meta,
        tagged_addresses,
        weights,
        enable_tag_override,
        checks,
    })
}

fn meta_problem(meta: &BTreeMap<String, String>) -> Option<String> {
    if meta.len() > 64 {
        return Some("Node metadata cannot contain more than 64 key/value pairs".to_string());
    }
    meta.iter().find_map(|(key, value)| {
        if key.is_empty() {
            Some("Key cannot be blank".to_string())
        } else if key.starts_with("consul-") {
            Some(format!(
                "Key prefix 'consul-' is reserved for internal use: {key:?}"
            ))
        } else if key.len() > 128 {
            Some(format!("Key is too long (limit: 128 characters): {key:?}"))
        } else if value.len() > 512 {
            Some(format!(
                "Value is too long (limit: 512 characters): {key:?}"
            ))
        } else {
            None
        }
    })
}

/// The agent adds `lan_ipv4`/`wan_ipv4` (or `_ipv6`) for an IP address.
pub fn add_default_tagged_addresses(
    tagged: &mut BTreeMap<String, (String, u16)>,
    address: &str,
    port: u16,
) {
    let names = match address.parse::<IpAddr>() {
        Ok(IpAddr::V4(_)) => ["lan_ipv4", "wan_ipv4"],
        Ok(IpAddr::V6(_)) => ["lan_ipv6", "wan_ipv6"],
        Err(_) => return,
    };
    for name in names {
        tagged
            .entry(name.to_string())
            .or_insert_with(|| (address.to_string(), port));
    }
}

/// `PUT /v1/agent/check/register`: a check with `ID` (default `Name`) and
/// an optional `ServiceID`; `Name` is required.
pub fn parse_standalone_check(body: &[u8]) -> Result<CheckDefinition, ApiError> {
    let value = parse_body(body).decoded()?;
    let fields = Fields::of(&value).decoded()?;
    let name = fields
        .string(&["Name"])
        .decoded()?
        .filter(|n| !n.is_empty());
    let Some(name) = name else {
        return Err(ApiError::bad_request("Missing check name"));
    };
    let mut check = match decode_check(fields)? {
        Some(check) => check,
        None => return Err(ApiError::bad_request("Missing check name")),
    };
    check.id = Some(check.id.clone().unwrap_or_else(|| name.clone()));
    check.name = Some(name);
    Ok(check)
}

/// One check object; `None` for an empty object (Consul skips it).
fn decode_check(f: Fields<'_>) -> Result<Option<CheckDefinition>, ApiError> {
    if f.is_empty() {
        return Ok(None);
    }
    let present = |names: &[&str]| match f.get(names) {
        None => false,
        Some(serde_json::Value::String(s)) => !s.is_empty(),
        Some(serde_json::Value::Array(a)) => !a.is_empty(),
        Some(_) => true,
    };
    let interval_type = [
        (&["HTTP"][..], "http"),
        (&["TCP"][..], "tcp"),
        (&["UDP"][..], "udp"),
        (&["GRPC"][..], "grpc"),
        (&["H2PING", "h2ping"][..], "h2ping"),
        (&["Args", "ScriptArgs", "script_args"][..], "script"),
        (&["OSService", "os_service"][..], "os_service"),
    ]
    .into_iter()
    .find_map(|(names, kind)| present(names).then_some(kind));
    let alias = present(&["AliasService", "alias_service", "AliasNode", "alias_node"]);
    let docker = present(&["DockerContainerID", "docker_container_id"]);
    let ttl = f.duration(&["TTL"]).decoded()?.filter(|d| !d.is_zero());
    let interval = f
        .duration(&["Interval"])
        .decoded()?
        .filter(|d| !d.is_zero());
    let timeout = f.duration(&["Timeout"]).decoded()?.filter(|d| !d.is_zero());
    let status = f.string(&["Status"]).decoded()?.filter(|s| !s.is_empty());
    let check_type = match (interval_type, docker, alias, ttl) {
        (Some(kind), _, _, _) => kind,
        (None, true, _, _) => "docker",
        (None, false, true, _) => "alias",
        (None, false, false, Some(_)) => "ttl",
        (None, false, false, None) => "",
    };

    let invalid = |reason: &str| Err(ApiError::bad_request(format!("Invalid check: {reason}")));
    if interval.is_some() && ttl.is_some() {
        return invalid("Interval and TTL cannot both be specified");
    }
    if (interval_type.is_some() || docker) && interval.is_none() {
        return invalid(
            "Interval must be > 0 for Script, HTTP, H2PING, TCP, UDP or OSService checks",
        );
    }
    if alias && ttl.is_some() {
        return invalid("TTL must be not be set for Alias checks");
    }
    if check_type.is_empty() {
        return invalid("TTL must be > 0 for TTL checks");
    }
    let status = match status {
        None => None,
        Some(text) => match CheckStatus::parse(&text) {
            Some(status) => Some(status),
            None => {
                return Err(ApiError::bad_request(
                    "Status for checks must 'passing', 'warning', 'critical'",
                ));
            }
        },
    };
    let output_max = f
        .u64(&["OutputMaxSize", "output_max_size"])
        .decoded()?
        .and_then(|n| usize::try_from(n).ok())
        .filter(|n| *n > 0)
        .unwrap_or(DEFAULT_OUTPUT_MAX);
    Ok(Some(CheckDefinition {
        id: f
            .string(&["CheckID", "check_id", "ID"])
            .decoded()?
            .filter(|s| !s.is_empty()),
        name: f.string(&["Name"]).decoded()?.filter(|s| !s.is_empty()),
        check_type,
        ttl,
        interval,
        timeout,
        status,
        notes: f.string(&["Notes"]).decoded()?.unwrap_or_default(),
        deregister_after: f
            .duration(&[
                "DeregisterCriticalServiceAfter",
                "deregister_critical_service_after",
            ])
            .decoded()?,
        output_max,
        service_id: f
            .string(&["ServiceID", "service_id"])
            .decoded()?
            .filter(|s| !s.is_empty()),
    }))
}
