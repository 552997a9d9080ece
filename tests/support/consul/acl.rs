//! ACLs: tokens carrying prefix and exact rules per resource, resolved per
//! request as Consul does (§0.3, §6).
//!
//! With ACLs off every token is ignored and everything is allowed. With ACLs
//! on, a request without a token uses the `anonymous` token (a configured
//! token whose secret is `anonymous`, else one without rules); an unknown
//! secret is `403 ACL not found`. A rule for an exact name beats prefix
//! rules, the longest prefix beats shorter ones, `deny` beats other rules for
//! the same name, and the default policy decides when no rule matches.

use http::HeaderMap;

use super::wire::{ApiError, Query};

/// `acl.default_policy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    Allow,
    Deny,
}

impl Policy {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Deny => "deny",
        }
    }
}

/// A rule's policy; `Write` includes `Read`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Access {
    Deny,
    Read,
    Write,
}

/// What a rule is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    Key,
    Service,
    Node,
    Agent,
    Session,
}

impl Resource {
    fn as_str(self) -> &'static str {
        match self {
            Self::Key => "key",
            Self::Service => "service",
            Self::Node => "node",
            Self::Agent => "agent",
            Self::Session => "session",
        }
    }
}

/// `key_prefix "app/" { policy = "read" }` is
/// `Rule { resource: Key, name: "app/", exact: false, access: Read }`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub resource: Resource,
    pub name: String,
    pub exact: bool,
    pub access: Access,
}

/// A token: its secret (what clients send), accessor (what error messages
/// show) and rules.
#[derive(Debug, Clone)]
pub struct AclToken {
    pub secret: String,
    pub accessor: String,
    pub rules: Vec<Rule>,
}

impl AclToken {
    /// A token without rules; its accessor ID is derived from the secret.
    pub fn new(secret: impl Into<String>) -> Self {
        let secret = secret.into();
        let accessor = super::render::uuid_from(&format!("accessor:{secret}"));
        Self {
            secret,
            accessor,
            rules: Vec::new(),
        }
    }

    /// The token used for requests without one; give it rules to change
    /// what anonymous requests may do.
    pub fn anonymous() -> Self {
        Self::new("anonymous")
    }

    /// Write access to every resource.
    pub fn management(secret: impl Into<String>) -> Self {
        [
            Resource::Key,
            Resource::Service,
            Resource::Node,
            Resource::Agent,
            Resource::Session,
        ]
        .into_iter()
        .fold(Self::new(secret), |token, resource| {
            token.rule(resource, "", false, Access::Write)
        })
    }

    pub fn rule(mut self, resource: Resource, name: &str, exact: bool, access: Access) -> Self {
        self.rules.push(Rule {
            resource,
            name: name.to_string(),
            exact,
            access,
        });
        self
    }

    pub fn key_prefix(self, prefix: &str, access: Access) -> Self {
        self.rule(Resource::Key, prefix, false, access)
    }

    pub fn key(self, name: &str, access: Access) -> Self {
        self.rule(Resource::Key, name, true, access)
    }

    pub fn service_prefix(self, prefix: &str, access: Access) -> Self {
        self.rule(Resource::Service, prefix, false, access)
    }

    pub fn service(self, name: &str, access: Access) -> Self {
        self.rule(Resource::Service, name, true, access)
    }

    pub fn node_prefix(self, prefix: &str, access: Access) -> Self {
        self.rule(Resource::Node, prefix, false, access)
    }

    pub fn agent_prefix(self, prefix: &str, access: Access) -> Self {
        self.rule(Resource::Agent, prefix, false, access)
    }

    pub fn session_prefix(self, prefix: &str, access: Access) -> Self {
        self.rule(Resource::Session, prefix, false, access)
    }
}

/// ACL configuration of a test server (`acl.enabled = true`).
#[derive(Debug, Clone)]
pub struct AclOptions {
    pub default_policy: Policy,
    pub tokens: Vec<AclToken>,
}

impl AclOptions {
    pub fn new(default_policy: Policy) -> Self {
        Self {
            default_policy,
            tokens: Vec::new(),
        }
    }

    pub fn token(mut self, token: AclToken) -> Self {
        self.tokens.push(token);
        self
    }
}

/// The token a request carries: `?token=`, then `X-Consul-Token`, then
/// `Authorization: Bearer` (scheme case-insensitive); the first non-empty.
pub fn request_token(query: &Query, headers: &HeaderMap) -> Option<String> {
    if let Some(token) = query.non_empty("token") {
        return Some(token.to_string());
    }
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())
    };
    if let Some(token) = header("x-consul-token") {
        return Some(token.to_string());
    }
    let authorization = header("authorization")?;
    let mut words = authorization.split_whitespace();
    let scheme = words.next()?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    words.next().map(str::to_string)
}

/// What one request may do.
#[derive(Debug, Clone)]
pub struct Authz {
    enabled: Option<Enabled>,
}

#[derive(Debug, Clone)]
struct Enabled {
    default_policy: Policy,
    rules: Vec<Rule>,
    /// `None` for the anonymous token.
    accessor: Option<String>,
}

impl Authz {
    /// Everything allowed (ACLs off).
    pub fn disabled() -> Self {
        Self { enabled: None }
    }

    /// Resolves the request's token against the configuration.
    pub fn resolve(options: Option<&AclOptions>, token: Option<&str>) -> Result<Self, ApiError> {
        let Some(options) = options else {
            return Ok(Self::disabled());
        };
        let secret = token.unwrap_or("anonymous");
        let found = options.tokens.iter().find(|t| t.secret == secret);
        let (rules, accessor) = match (found, secret == "anonymous") {
            (Some(token), true) => (token.rules.clone(), None),
            (None, true) => (Vec::new(), None),
            (Some(token), false) => (token.rules.clone(), Some(token.accessor.clone())),
            (None, false) => return Err(ApiError::acl_not_found()),
        };
        Ok(Self {
            enabled: Some(Enabled {
                default_policy: options.default_policy,
                rules,
                accessor,
            }),
        })
    }

    /// The access this token has to `name`.
    pub fn access(&self, resource: Resource, name: &str) -> Access {
        let Some(enabled) = &self.enabled else {
            return Access::Write;
        };
        let matching = |exact: bool| {
            enabled.rules.iter().filter(move |rule| {
                rule.resource == resource
                    && rule.exact == exact
                    && if exact {
                        rule.name == name
                    } else {
                        name.starts_with(&rule.name)
                    }
            })
        };
        let strongest = |rules: Vec<&Rule>| {
            if rules.iter().any(|r| r.access == Access::Deny) {
                Access::Deny
            } else {
                rules.iter().map(|r| r.access).max().unwrap_or(Access::Deny)
            }
        };
        let exact: Vec<&Rule> = matching(true).collect();
        if !exact.is_empty() {
            return strongest(exact);
        }
        let longest = matching(false).map(|r| r.name.len()).max();
        match longest {
            Some(len) => strongest(matching(false).filter(|r| r.name.len() == len).collect()),
            None => match enabled.default_policy {
                Policy::Allow => Access::Write,
                Policy::Deny => Access::Deny,
            },
        }
    }

    pub fn can_read(&self, resource: Resource, name: &str) -> bool {
        self.access(resource, name) >= Access::Read
    }

    pub fn can_write(&self, resource: Resource, name: &str) -> bool {
        self.access(resource, name) == Access::Write
    }

    /// Write on `prefix` and on everything under it (`DELETE ?recurse`).
    pub fn can_write_prefix(&self, resource: Resource, prefix: &str) -> bool {
        let Some(enabled) = &self.enabled else {
            return true;
        };
        self.can_write(resource, prefix)
            && enabled.rules.iter().all(|rule| {
                rule.resource != resource
                    || !rule.name.starts_with(prefix)
                    || rule.access == Access::Write
            })
    }

    /// `Ok` when the token has `need` on `name`, else `403 Permission denied…`.
    pub fn require(&self, resource: Resource, name: &str, need: Access) -> Result<(), ApiError> {
        if self.access(resource, name) >= need {
            return Ok(());
        }
        let permission = format!(
            "{}:{}",
            resource.as_str(),
            if need == Access::Write {
                "write"
            } else {
                "read"
            }
        );
        let message = match self.enabled.as_ref().and_then(|e| e.accessor.as_deref()) {
            Some(accessor) => format!(
                "Permission denied: token with AccessorID '{accessor}' lacks permission '{permission}' on {name:?}"
            ),
            None => format!(
                "Permission denied: anonymous token lacks permission '{permission}' on {name:?}. The anonymous token is used implicitly when a request does not specify a token."
            ),
        };
        Err(ApiError::forbidden(message))
    }

    /// Whether responses may say `X-Consul-Results-Filtered-By-ACLs: true`
    /// (only for non-anonymous tokens).
    pub fn reports_filtering(&self) -> bool {
        self.enabled.as_ref().is_some_and(|e| e.accessor.is_some())
    }
}
