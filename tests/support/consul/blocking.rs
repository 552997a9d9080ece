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
//! A query is re-evaluated on every wake, never assumed changed. A client
//! index ahead of the server's blocks the whole wait and gets the lower
//! index back. A simulated snapshot restore releases every waiter at once.

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
        let stale = allows_stale && max_stale.is_none_or(|max| lag <= max);
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
        Ok(Self {
            ctx,
            authz,
            style,
            index,
            wait,
            stale,
            consistency,
        })
    }

    /// Evaluates `eval` now and, for a blocking request, again after every
    /// change until its index exceeds the client's or the wait ends.
    pub async fn serve(
        self,
        eval: impl Fn(&State, &Authz) -> Outcome,
    ) -> Result<Response<Body>, ApiError> {
        let shared = &self.ctx.shared;
        let mut changes = shared.subscribe();
        let (mut outcome, epoch) = shared.read(|st| (eval(st, &self.authz), st.restore_epoch()));
        if self.index == 0 || outcome.index > self.index {
            return Ok(self.respond(outcome));
        }
        let _open = OpenBlocking::enter(&shared.open_blocking);
        let deadline = Instant::now() + self.wait + self.jitter();
        let mut baseline = self.index;
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => break,
                () = shared.until_shutdown() => break,
                changed = changes.changed() => if changed.is_err() { break },
            }
            if !self.stale && !shared.leader() {
                return Err(ApiError::no_leader());
            }
            let was_not_found = outcome.is_not_found();
            let next_epoch;
            (outcome, next_epoch) = shared.read(|st| (eval(st, &self.authz), st.restore_epoch()));
            if next_epoch != epoch {
                break;
            }
            // Consul ≥ 1.11: a result that was and still is "not found" adopts
            // the new index and keeps waiting, so unrelated writes do not
            // release it.
            if was_not_found && outcome.is_not_found() && !shared.options.wake_while_not_found {
                baseline = baseline.max(outcome.index);
                continue;
            }
            if outcome.index > baseline {
                break;
            }
        }
        Ok(self.respond(outcome))
    }

    fn jitter(&self) -> Duration {
        let limit = self.wait.as_nanos() / 16;
        if !self.ctx.shared.options.jitter || limit == 0 {
            return Duration::ZERO;
        }
        let limit = u64::try_from(limit).unwrap_or(u64::MAX);
        Duration::from_nanos(fastrand::u64(0..limit))
    }

    fn respond(&self, outcome: Outcome) -> Response<Body> {
        let shared = &self.ctx.shared;
        let mut response = match outcome.result {
            ReadResult::Json(value) => json_response(&value, self.ctx.pretty()),
            ReadResult::Raw(bytes) => {
                let mut response = text_response(StatusCode::OK, "text/plain", bytes);
                set_header(&mut response, "x-content-type-options", "nosniff");
                set_header(&mut response, "content-security-policy", "sandbox");
                response
            }
            ReadResult::NotFound => empty_response(StatusCode::NOT_FOUND),
        };
        let leader = shared.leader();
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
        if self.ctx.query.has("cached") {
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
