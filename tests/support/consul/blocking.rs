//! Blocking reads (§2): parameter parsing, the wait loop, and the query-meta
//! headers every blocking-capable read carries.
//!
//! ```text
//! prepare: stale/max_stale/consistent, wait, index (400s) → dc → token (403) → leader (500)
//! serve:   evaluate ─ index > client's? ─yes─▶ answer
//!              ▲            │no
//!              └─ write / leader change ◀─ wait (until deadline, shutdown, restore)
//! ```
//!
//! A query is re-evaluated on every wake, never assumed changed (through a
//! memo: one evaluation per distinct read per write). A client index ahead
//! of the server's blocks the whole wait and gets the lower index back. A
//! simulated snapshot restore releases every waiter at once.
//!
//! What a read sees can be a *view* other than the state: an injected
//! `Fault::Empty`, an agent that restarted and has not synced, or, for a
//! stale read during an election, a follower that restored an empty
//! snapshot. `?cached` reads of health/service and catalog/services go
//! through the agent's cache, which counts one server read per result
//! change (its background refresh) instead of one per request.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Response, StatusCode};
use serde_json::Value;
use tokio::time::Instant;

use super::acl::Authz;
use super::duration;
use super::router::Ctx;
use super::state::State;
use super::wire::{ApiError, Body, empty_response, json_response, set_header, text_response};

/// What a read found.
#[derive(Debug, Clone)]
pub enum ReadResult {
    Json(Value),
    /// `?raw` KV value.
    Raw(Bytes),
    /// KV `404` (empty body, meta headers still sent).
    NotFound,
}

/// One evaluation of a read: result, its index, and whether ACLs hid part.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub index: u64,
    pub result: ReadResult,
    pub filtered: bool,
}

impl Outcome {
    pub fn json(index: u64, value: Value) -> Self {
        Self {
            index,
            result: ReadResult::Json(value),
            filtered: false,
        }
    }

    pub fn raw(index: u64, bytes: Bytes) -> Self {
        Self {
            index,
            result: ReadResult::Raw(bytes),
            filtered: false,
        }
    }

    pub fn not_found(index: u64) -> Self {
        Self {
            index,
            result: ReadResult::NotFound,
            filtered: false,
        }
    }

    pub fn filtered(mut self, filtered: bool) -> Self {
        self.filtered = filtered;
        self
    }

    fn is_not_found(&self) -> bool {
        matches!(self.result, ReadResult::NotFound)
    }

    /// The same read finding nothing: `[]`/`{}` for lists and maps, a KV
    /// `404`.
    fn emptied(&self, style: MetaStyle, index: u64) -> Self {
        let result = match (&self.result, style) {
            (ReadResult::Json(Value::Array(_)), MetaStyle::Catalog) => {
                ReadResult::Json(Value::Array(Vec::new()))
            }
            (ReadResult::Json(Value::Object(_)), MetaStyle::Catalog) => {
                ReadResult::Json(Value::Object(serde_json::Map::new()))
            }
            (ReadResult::Json(other), MetaStyle::Catalog) => ReadResult::Json(other.clone()),
            _ => ReadResult::NotFound,
        };
        Self {
            index,
            result,
            filtered: false,
        }
    }
}

/// What a read sees instead of the state, if anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum View {
    State,
    /// Nothing found, at `index` (the state's when `None`), with
    /// `X-Consul-KnownLeader` overridden when `known_leader` is set.
    Empty {
        index: Option<u64>,
        known_leader: Option<bool>,
    },
}

/// One evaluation as the client will see it.
struct Seen {
    outcome: Arc<Outcome>,
    view: View,
}

impl Seen {
    fn index(&self) -> u64 {
        match self.view {
            View::Empty {
                index: Some(index), ..
            } => index,
            _ => self.outcome.index,
        }
    }

    fn is_not_found(&self) -> bool {
        self.outcome.is_not_found() || matches!(self.view, View::Empty { .. })
    }
}

/// Which query-meta headers a read carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetaStyle {
    /// Index, KnownLeader, LastContact.
    Kv,
    /// Those plus `X-Consul-Effective-Consistency` (catalog and health).
    Catalog,
}

/// A read whose parameters, token and leadership were checked.
pub struct ReadRequest<'a> {
    ctx: &'a Ctx,
    pub authz: Authz,
    style: MetaStyle,
    index: u64,
    wait: Duration,
    stale: bool,
    /// Served through the agent's cache.
    cached: bool,
    consistency: &'static str,
}

impl<'a> ReadRequest<'a> {
    pub fn prepare(ctx: &'a Ctx, style: MetaStyle) -> Result<Self, ApiError> {
        let query = &ctx.query;
        let options = &ctx.shared.options;
        let max_stale = match query.non_empty("max_stale") {
            None => None,
            Some(text) => match duration::parse(text) {
                None => return Err(ApiError::bad_request("Invalid max_stale value")),
                Some(parsed) => parsed.positive(),
            },
        };
        let allows_stale = query.has("stale") || max_stale.is_some();
        let consistent = query.has("consistent");
        if allows_stale && consistent {
            return Err(ApiError::bad_request(
                "Cannot specify ?stale with ?consistent, conflicting semantics.",
            ));
        }
        if query.has("cached") && consistent {
            return Err(ApiError::bad_request(
                "Cannot specify ?cached with ?consistent, conflicting semantics.",
            ));
        }
        // A server lagging more than `max_stale` hands the read to the leader.
        let lag = Duration::from_millis(ctx.shared.last_contact_ms(true));
        // Only health/service and catalog/services support agent caching;
        // the cache fetches with `stale` whatever the client asked.
        let cached = query.has("cached") && ctx.cacheable();
        let stale = (allows_stale && max_stale.is_none_or(|max| lag <= max)) || cached;
        let wait = match query.non_empty("wait") {
            None => options.default_wait,
            Some(text) => match duration::parse(text) {
                None => return Err(ApiError::bad_request("Invalid wait time")),
                Some(parsed) => parsed.positive().unwrap_or(options.default_wait),
            },
        }
        .min(options.max_wait);
        let index = match query.non_empty("index") {
            None => 0,
            Some(text) => text
                .parse::<u64>()
                .map_err(|_| ApiError::bad_request("Invalid index"))?,
        };
        ctx.check_datacenter()?;
        let authz = ctx.authz()?;
        if !stale && !ctx.shared.leader() {
            return Err(ApiError::no_leader());
        }
        let consistency = if consistent {
            "consistent"
        } else if stale {
            "stale"
        } else {
            "leader"
        };
        if !cached {
            // The agent forwards it: one read at the servers, at the leader
            // unless stale.
            ctx.shared.log.server_read(&ctx.path, !stale);
        }
        Ok(Self {
            ctx,
            authz,
            style,
            index,
            wait,
            stale,
            cached,
            consistency,
        })
    }

    /// What the client sees of the state now, and the restore epoch.
    fn evaluate(&self, eval: &impl Fn(&State, &Authz) -> Outcome) -> (Seen, u64) {
        let shared = &self.ctx.shared;
        let (outcome, epoch) = shared.evaluate(&self.ctx.memo_key, |st| eval(st, &self.authz));
        if self.cached {
            self.ctx.agent.observe(
                &self.ctx.memo_key,
                &self.ctx.path,
                outcome.index,
                &shared.log,
            );
        }
        let view = if let Some(known_leader) = self.ctx.empty {
            View::Empty {
                index: None,
                known_leader: Some(known_leader),
            }
        } else if shared.unsynced() {
            View::Empty {
                index: None,
                known_leader: None,
            }
        } else if self.stale && shared.follower_view_empty() {
            View::Empty {
                index: Some(1),
                known_leader: Some(false),
            }
        } else {
            View::State
        };
        (Seen { outcome, view }, epoch)
    }

    /// Evaluates `eval` now and, for a blocking request, again after every
    /// change until its index exceeds the client's or the wait ends.
    pub async fn serve(
        self,
        eval: impl Fn(&State, &Authz) -> Outcome,
    ) -> Result<Response<Body>, ApiError> {
        let shared = &self.ctx.shared;
        let mut changes = shared.subscribe();
        let hit = self.cached && self.ctx.agent.has(&self.ctx.memo_key);
        let (mut seen, epoch) = self.evaluate(&eval);
        if self.index == 0 || seen.index() > self.index {
            return Ok(self.respond(&seen, hit));
        }
        let _open = OpenBlocking::enter(&shared.open_blocking);
        let deadline = Instant::now() + self.wait + self.jitter();
        let mut baseline = self.index;
        loop {
            let ended = tokio::select! {
                () = tokio::time::sleep_until(deadline) => true,
                () = shared.until_shutdown() => true,
                changed = changes.changed() => changed.is_err(),
            };
            if ended {
                // The current result (what it was, unless a view ended).
                (seen, _) = self.evaluate(&eval);
                break;
            }
            if !self.stale && !shared.leader() {
                return Err(ApiError::no_leader());
            }
            let was_not_found = seen.is_not_found();
            let next_epoch;
            (seen, next_epoch) = self.evaluate(&eval);
            if next_epoch != epoch {
                break;
            }
            // Consul ≥ 1.11: a result that was and still is "not found" adopts
            // the new index and keeps waiting, so unrelated writes do not
            // release it.
            if was_not_found && seen.is_not_found() && !shared.options.wake_while_not_found {
                baseline = baseline.max(seen.index());
                continue;
            }
            if seen.index() > baseline {
                break;
            }
        }
        Ok(self.respond(&seen, hit))
    }

    fn jitter(&self) -> Duration {
        let limit = self.wait.as_nanos() / 16;
        if !self.ctx.shared.options.jitter || limit == 0 {
            return Duration::ZERO;
        }
        let limit = u64::try_from(limit).unwrap_or(u64::MAX);
        Duration::from_nanos(fastrand::u64(0..limit))
    }

    fn respond(&self, seen: &Seen, hit: bool) -> Response<Body> {
        let shared = &self.ctx.shared;
        let (emptied, known_leader) = match seen.view {
            View::State => (None, None),
            View::Empty { known_leader, .. } => (
                Some(seen.outcome.emptied(self.style, seen.index())),
                known_leader,
            ),
        };
        let outcome = emptied.as_ref().unwrap_or(&seen.outcome);
        let mut response = match &outcome.result {
            ReadResult::Json(value) => json_response(value, self.ctx.pretty()),
            ReadResult::Raw(bytes) => {
                let mut response = text_response(StatusCode::OK, "text/plain", bytes.clone());
                set_header(&mut response, "x-content-type-options", "nosniff");
                set_header(&mut response, "content-security-policy", "sandbox");
                response
            }
            ReadResult::NotFound => empty_response(StatusCode::NOT_FOUND),
        };
        let leader = known_leader.unwrap_or_else(|| shared.leader());
        set_header(
            &mut response,
            "x-consul-index",
            &outcome.index.max(1).to_string(),
        );
        set_header(
            &mut response,
            "x-consul-knownleader",
            if leader { "true" } else { "false" },
        );
        set_header(
            &mut response,
            "x-consul-lastcontact",
            &shared.last_contact_ms(self.stale).to_string(),
        );
        if self.style == MetaStyle::Catalog {
            set_header(
                &mut response,
                "x-consul-effective-consistency",
                self.consistency,
            );
        }
        if outcome.filtered && self.authz.reports_filtering() {
            set_header(&mut response, "x-consul-results-filtered-by-acls", "true");
        }
        if self.cached {
            set_header(&mut response, "x-cache", if hit { "HIT" } else { "MISS" });
            if hit {
                // The cache is refreshed with every change: never behind.
                set_header(&mut response, "age", "0");
            }
        } else if self.ctx.query.has("cached") {
            set_header(&mut response, "x-cache", "MISS");
        }
        response
    }
}

/// Counts a request as blocked while it lives (also when its future is
/// dropped because the client went away).
struct OpenBlocking<'a>(&'a AtomicUsize);

impl<'a> OpenBlocking<'a> {
    fn enter(counter: &'a AtomicUsize) -> Self {
        counter.fetch_add(1, Ordering::SeqCst);
        Self(counter)
    }
}

impl Drop for OpenBlocking<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}
