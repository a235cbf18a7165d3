//! The account pool on the proxy path: which accounts exist (a snapshot reloaded from
//! the database), their health, in-flight counts and sticky sessions.
//!
//! Nothing here touches the database or awaits: a pick reads an `Arc` snapshot, checks
//! each account's health under a short lock and reserves a concurrency slot with an
//! atomic. Health transitions are handed to an event sink (the publisher in
//! production) and never wait on it.

pub mod health;
pub mod scheduler;

use crate::accounts::Account;
use chrono::{DateTime, Utc};
use health::{Cooldowns, Health, Signal};
use scheduler::Candidate;
use schema::{
    AccountHealthChanged, AccountId, ApiKeyId, HealthReason, HealthState, RoutingDecision,
    RoutingReason,
};
use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

/// Receives every health transition the pool makes.
pub type HealthSink = Arc<dyn Fn(AccountHealthChanged) + Send + Sync>;

/// Scheduling state kept per account id across reloads.
#[derive(Debug)]
pub struct AccountRuntime {
    /// The account.
    pub id: AccountId,
    /// Requests currently using the account.
    inflight: AtomicU32,
    /// Health.
    health: Mutex<Health>,
}

impl AccountRuntime {
    fn new(id: AccountId) -> Self {
        Self {
            id,
            inflight: AtomicU32::new(0),
            health: Mutex::new(Health::default()),
        }
    }

    /// Current health.
    pub fn health(&self) -> Health {
        *self.health.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Requests in flight.
    pub fn inflight(&self) -> u32 {
        self.inflight.load(Ordering::Relaxed)
    }

    /// Reserves a slot under `cap` (0 = unlimited).
    fn try_acquire(&self, cap: u32) -> bool {
        self.inflight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (cap == 0 || n < cap).then_some(n + 1)
            })
            .is_ok()
    }
}

/// One account in a snapshot.
#[derive(Debug)]
pub struct Slot {
    /// Configuration.
    pub account: Account,
    /// Runtime state.
    pub rt: Arc<AccountRuntime>,
}

/// The accounts as last loaded.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Every account, enabled or not.
    pub slots: Vec<Slot>,
}

/// Why no account could be picked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoAccount {
    /// No enabled account serves the key's group (or all were already tried).
    NoneConfigured,
    /// Eligible accounts exist but all are at their concurrency cap: the relay's limit.
    AllBusy,
    /// Every account is cooling down after upstream limits; `soonest` is the first
    /// recovery.
    CoolingDown {
        /// When the first account recovers.
        soonest: DateTime<Utc>,
    },
    /// Every account is unauthorized or banned.
    Unusable,
}

/// What a pick needs to know about the request.
#[derive(Debug, Clone, Copy)]
pub struct PickRequest<'a> {
    /// The key's group (`None` = accounts without a group).
    pub group: Option<&'a str>,
    /// The client key (sticky sessions are scoped per key).
    pub key: &'a ApiKeyId,
    /// The Claude Code session, if any.
    pub session: Option<&'a str>,
    /// Accounts already tried for this request.
    pub exclude: &'a [Arc<AccountRuntime>],
}

/// A reserved account for one attempt. Dropping it frees the concurrency slot.
#[derive(Debug)]
pub struct Lease {
    snapshot: Arc<Snapshot>,
    index: usize,
    /// Why this account.
    pub decision: RoutingDecision,
}

impl Lease {
    /// The account's configuration.
    pub fn account(&self) -> &Account {
        &self.snapshot.slots[self.index].account
    }

    /// The account's runtime state.
    pub fn runtime(&self) -> &Arc<AccountRuntime> {
        &self.snapshot.slots[self.index].rt
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.snapshot.slots[self.index]
            .rt
            .inflight
            .fetch_sub(1, Ordering::AcqRel);
    }
}

#[derive(Debug)]
struct StickyEntry {
    rt: Arc<AccountRuntime>,
    last_used: Instant,
}

/// The pool.
pub struct Pool {
    snapshot: RwLock<Arc<Snapshot>>,
    sticky: Mutex<HashMap<u64, StickyEntry>>,
    hasher: RandomState,
    sticky_ttl: Duration,
    cooldowns: Cooldowns,
    sink: HealthSink,
}

/// Most sticky sessions remembered; beyond this the map is cleared of expired entries
/// and, if still full, emptied (sessions then simply re-pick).
const MAX_STICKY: usize = 1_000_000;

impl Pool {
    /// An empty pool.
    pub fn new(cooldowns: Cooldowns, sticky_ttl: Duration, sink: HealthSink) -> Self {
        Self {
            snapshot: RwLock::new(Arc::new(Snapshot::default())),
            sticky: Mutex::new(HashMap::new()),
            hasher: RandomState::new(),
            sticky_ttl,
            cooldowns,
            sink,
        }
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Replaces the account configuration, keeping health and in-flight counts of
    /// accounts that still exist. An unauthorized account whose credential changed is
    /// given another chance.
    pub fn reload(&self, accounts: Vec<Account>) {
        let old = self.snapshot();
        let by_id: HashMap<&AccountId, &Slot> =
            old.slots.iter().map(|s| (&s.account.id, s)).collect();
        let mut events = Vec::new();
        let slots = accounts
            .into_iter()
            .map(|account| {
                let rt = match by_id.get(&account.id) {
                    Some(prev) => {
                        if prev.account.credential != account.credential {
                            let mut h = prev
                                .rt
                                .health
                                .lock()
                                .unwrap_or_else(PoisonError::into_inner);
                            if h.state == HealthState::Unauthorized {
                                events.extend(h.reset(&account.id, HealthReason::ManualReset));
                            }
                        }
                        prev.rt.clone()
                    }
                    None => Arc::new(AccountRuntime::new(account.id.clone())),
                };
                Slot { account, rt }
            })
            .collect();
        drop(by_id);
        *self
            .snapshot
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Arc::new(Snapshot { slots });
        for e in events {
            (self.sink)(e);
        }
    }

    /// Picks and reserves an account for one attempt.
    pub fn pick(&self, req: PickRequest<'_>, now: DateTime<Utc>) -> Result<Lease, NoAccount> {
        let snapshot = self.snapshot();
        let failover = !req.exclude.is_empty();
        // Indexes of eligible accounts; small, so a short Vec is fine.
        let mut eligible: Vec<usize> = Vec::with_capacity(snapshot.slots.len());
        let mut busy = false;
        let mut soonest: Option<DateTime<Utc>> = None;
        let mut unusable = false;
        for (i, slot) in snapshot.slots.iter().enumerate() {
            let a = &slot.account;
            if !a.enabled || a.group.as_deref() != req.group {
                continue;
            }
            if req.exclude.iter().any(|x| Arc::ptr_eq(x, &slot.rt)) {
                continue;
            }
            let available = {
                let mut h = slot
                    .rt
                    .health
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                if let Some(ev) = h.expire(&a.id, now) {
                    (self.sink)(ev);
                }
                if !h.available(now) {
                    match h.until {
                        Some(u) => soonest = Some(soonest.map_or(u, |s| s.min(u))),
                        None => unusable = true,
                    }
                    false
                } else {
                    true
                }
            };
            if !available {
                continue;
            }
            if a.concurrency != 0 && slot.rt.inflight() >= a.concurrency {
                busy = true;
                continue;
            }
            eligible.push(i);
        }
        let count = u32::try_from(eligible.len()).unwrap_or(u32::MAX);

        // Sticky session: reuse the bound account when it is still eligible.
        let sticky_hash = req
            .session
            .map(|s| self.hasher.hash_one((req.key.as_str(), s)));
        if let Some(h) = sticky_hash {
            let bound = {
                let mut map = self.sticky.lock().unwrap_or_else(PoisonError::into_inner);
                match map.get_mut(&h) {
                    Some(e) if e.last_used.elapsed() < self.sticky_ttl => {
                        e.last_used = Instant::now();
                        Some(e.rt.clone())
                    }
                    Some(_) => {
                        map.remove(&h);
                        None
                    }
                    None => None,
                }
            };
            if let Some(rt) = bound {
                if let Some(pos) = eligible
                    .iter()
                    .position(|&i| Arc::ptr_eq(&snapshot.slots[i].rt, &rt))
                {
                    let i = eligible[pos];
                    let slot = &snapshot.slots[i];
                    if slot.rt.try_acquire(slot.account.concurrency) {
                        return Ok(self.lease(
                            &snapshot,
                            i,
                            RoutingReason::StickySession,
                            count,
                            req.group,
                        ));
                    }
                    eligible.swap_remove(pos);
                }
            }
        }

        let mut rng = rand::thread_rng();
        while !eligible.is_empty() {
            let candidates: Vec<Candidate> = eligible
                .iter()
                .map(|&i| Candidate {
                    priority: snapshot.slots[i].account.priority,
                    weight: snapshot.slots[i].account.weight,
                })
                .collect();
            let Some(pos) = scheduler::choose(&candidates, &mut rng) else {
                break;
            };
            let i = eligible[pos];
            let slot = &snapshot.slots[i];
            if slot.rt.try_acquire(slot.account.concurrency) {
                if let Some(h) = sticky_hash {
                    self.bind(h, slot.rt.clone());
                }
                let reason = if failover {
                    RoutingReason::Failover
                } else {
                    RoutingReason::PriorityWeighted
                };
                return Ok(self.lease(&snapshot, i, reason, count, req.group));
            }
            // Lost a race for the last slot; try the others.
            busy = true;
            eligible.swap_remove(pos);
        }
        Err(if busy {
            NoAccount::AllBusy
        } else if let Some(soonest) = soonest {
            NoAccount::CoolingDown { soonest }
        } else if unusable {
            NoAccount::Unusable
        } else {
            NoAccount::NoneConfigured
        })
    }

    fn lease(
        &self,
        snapshot: &Arc<Snapshot>,
        index: usize,
        reason: RoutingReason,
        eligible: u32,
        group: Option<&str>,
    ) -> Lease {
        let a = &snapshot.slots[index].account;
        Lease {
            decision: RoutingDecision {
                account: a.id.clone(),
                reason,
                priority: a.priority,
                weight: a.weight,
                eligible,
                group: group.map(str::to_owned),
            },
            snapshot: snapshot.clone(),
            index,
        }
    }

    fn bind(&self, hash: u64, rt: Arc<AccountRuntime>) {
        let mut map = self.sticky.lock().unwrap_or_else(PoisonError::into_inner);
        if map.len() >= MAX_STICKY {
            let ttl = self.sticky_ttl;
            map.retain(|_, e| e.last_used.elapsed() < ttl);
            if map.len() >= MAX_STICKY {
                map.clear();
            }
        }
        map.insert(
            hash,
            StickyEntry {
                rt,
                last_used: Instant::now(),
            },
        );
    }

    /// Feeds an upstream signal about an account into its health.
    pub fn observe(&self, rt: &AccountRuntime, signal: Signal, now: DateTime<Utc>) {
        let ev = rt
            .health
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .observe(&rt.id, signal, now, &self.cooldowns);
        if let Some(ev) = ev {
            (self.sink)(ev);
        }
    }

    /// Adopts a health transition recorded by another relay or an administrator.
    pub fn apply_remote(&self, ev: &AccountHealthChanged, now: DateTime<Utc>) {
        let snapshot = self.snapshot();
        if let Some(slot) = snapshot.slots.iter().find(|s| s.account.id == ev.account) {
            slot.rt
                .health
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .apply_remote(ev, now);
        }
    }

    /// Resets an account to healthy (administrator action).
    pub fn reset(&self, id: &AccountId) -> bool {
        let snapshot = self.snapshot();
        let Some(slot) = snapshot.slots.iter().find(|s| &s.account.id == id) else {
            return false;
        };
        let ev = slot
            .rt
            .health
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .reset(id, HealthReason::ManualReset);
        if let Some(ev) = ev {
            (self.sink)(ev);
        }
        true
    }

    /// Housekeeping: ends expired cooldowns (emitting their events) and forgets idle
    /// sticky sessions.
    pub fn sweep(&self, now: DateTime<Utc>) {
        let snapshot = self.snapshot();
        for slot in &snapshot.slots {
            let ev = slot
                .rt
                .health
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .expire(&slot.account.id, now);
            if let Some(ev) = ev {
                (self.sink)(ev);
            }
        }
        let ttl = self.sticky_ttl;
        self.sticky
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|_, e| e.last_used.elapsed() < ttl);
    }

    /// Number of remembered sticky sessions.
    pub fn sticky_len(&self) -> usize {
        self.sticky
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::accounts::AccountKind;
    use crate::crypto::Secret;

    fn account(id: &str, priority: i32, weight: u32, concurrency: u32) -> Account {
        Account {
            id: AccountId::parse(id).unwrap(),
            name: id.into(),
            kind: AccountKind::ApiKey,
            base_url: "http://127.0.0.1:1".into(),
            credential: Secret::new("sk-ant-api03-x"),
            priority,
            weight,
            group: None,
            concurrency,
            proxy_url: None,
            enabled: true,
            refresh_token: None,
            expires_at: None,
            created_at: chrono::DateTime::default(),
        }
    }

    fn pool() -> (Pool, Arc<Mutex<Vec<AccountHealthChanged>>>) {
        let events = Arc::new(Mutex::new(Vec::new()));
        let e2 = events.clone();
        let sink: HealthSink = Arc::new(move |ev| e2.lock().unwrap().push(ev));
        let cd = Cooldowns {
            rate_limit_default: Duration::from_secs(60),
            rate_limit_max: Duration::from_secs(600),
            overload: Duration::from_secs(30),
            server_error: Duration::from_secs(10),
            strikes: 1,
            strike_window: Duration::from_secs(30),
        };
        (Pool::new(cd, Duration::from_secs(3600), sink), events)
    }

    fn key() -> ApiKeyId {
        ApiKeyId::parse("key_1").unwrap()
    }

    fn req<'a>(
        key: &'a ApiKeyId,
        session: Option<&'a str>,
        exclude: &'a [Arc<AccountRuntime>],
    ) -> PickRequest<'a> {
        PickRequest {
            group: None,
            key,
            session,
            exclude,
        }
    }

    #[test]
    fn weights_and_priorities_over_2000_picks() {
        let (p, _) = pool();
        p.reload(vec![
            account("a", 0, 1, 0),
            account("b", 0, 3, 0),
            account("c", 1, 50, 0),
        ]);
        let k = key();
        let mut counts: HashMap<String, u32> = HashMap::new();
        for _ in 0..2000 {
            let l = p.pick(req(&k, None, &[]), Utc::now()).unwrap();
            *counts.entry(l.account().id.to_string()).or_default() += 1;
        }
        assert_eq!(counts.get("c"), None);
        let b = f64::from(counts["b"]) / 2000.0;
        // Expected 0.75; sd ≈ 0.0097, so ±0.06 is more than 6 sd.
        assert!((0.69..0.81).contains(&b), "share of b = {b}");
    }

    #[test]
    fn concurrency_cap_and_lease_release() {
        let (p, _) = pool();
        p.reload(vec![account("a", 0, 1, 1)]);
        let k = key();
        let l = p.pick(req(&k, None, &[]), Utc::now()).unwrap();
        assert_eq!(
            p.pick(req(&k, None, &[]), Utc::now()).unwrap_err(),
            NoAccount::AllBusy
        );
        drop(l);
        assert!(p.pick(req(&k, None, &[]), Utc::now()).is_ok());
    }

    #[test]
    fn sticky_sessions_are_per_key_revalidated_and_rebound() {
        let (p, events) = pool();
        p.reload(vec![account("a", 0, 1, 0), account("b", 0, 1, 0)]);
        let k = key();
        let first = p.pick(req(&k, Some("s1"), &[]), Utc::now()).unwrap();
        let bound = first.account().id.clone();
        assert_eq!(first.decision.reason, RoutingReason::PriorityWeighted);
        for _ in 0..50 {
            let l = p.pick(req(&k, Some("s1"), &[]), Utc::now()).unwrap();
            assert_eq!(l.account().id, bound);
            assert_eq!(l.decision.reason, RoutingReason::StickySession);
        }
        // The bound account fails: the session moves and stays on the other one.
        p.observe(
            first.runtime(),
            Signal::Status {
                status: 529,
                evidence: Default::default(),
            },
            Utc::now(),
        );
        assert_eq!(events.lock().unwrap().len(), 1);
        let moved = p.pick(req(&k, Some("s1"), &[]), Utc::now()).unwrap();
        assert_ne!(moved.account().id, bound);
        let other = moved.account().id.clone();
        for _ in 0..20 {
            assert_eq!(
                p.pick(req(&k, Some("s1"), &[]), Utc::now())
                    .unwrap()
                    .account()
                    .id,
                other
            );
        }
        // Another key with the same session id is not bound.
        let k2 = ApiKeyId::parse("key_2").unwrap();
        let l = p.pick(req(&k2, Some("s1"), &[]), Utc::now()).unwrap();
        assert_eq!(l.decision.reason, RoutingReason::PriorityWeighted);
    }

    #[test]
    fn exclusion_failover_and_no_account_reasons() {
        let (p, events) = pool();
        p.reload(vec![account("a", 0, 1, 0), account("b", 1, 1, 0)]);
        let k = key();
        let l = p.pick(req(&k, None, &[]), Utc::now()).unwrap();
        assert_eq!(l.account().id.as_str(), "a");
        let ex = vec![l.runtime().clone()];
        let l2 = p.pick(req(&k, None, &ex), Utc::now()).unwrap();
        assert_eq!(l2.account().id.as_str(), "b");
        assert_eq!(l2.decision.reason, RoutingReason::Failover);
        let now = Utc::now();
        let ev = schema::HealthEvidence {
            retry_after_s: Some(5),
            ..Default::default()
        };
        p.observe(
            l.runtime(),
            Signal::Status {
                status: 429,
                evidence: ev,
            },
            now,
        );
        p.observe(
            l2.runtime(),
            Signal::Status {
                status: 401,
                evidence: Default::default(),
            },
            now,
        );
        match p.pick(req(&k, None, &[]), now) {
            Err(NoAccount::CoolingDown { soonest }) => {
                assert_eq!(soonest, now + chrono::TimeDelta::seconds(5))
            }
            other => panic!("{other:?}"),
        }
        // After the cooldown "a" is back, with a recovery event.
        let later = now + chrono::TimeDelta::seconds(6);
        assert_eq!(
            p.pick(req(&k, None, &[]), later)
                .unwrap()
                .account()
                .id
                .as_str(),
            "a"
        );
        let evs = events.lock().unwrap();
        assert_eq!(evs.last().unwrap().reason, HealthReason::CooldownExpired);
        drop(evs);
        let mut g = account("g", 0, 1, 0);
        g.group = Some("vip".into());
        p.reload(vec![g]);
        assert_eq!(
            p.pick(req(&k, None, &[]), later).unwrap_err(),
            NoAccount::NoneConfigured
        );
        let k = key();
        let r = PickRequest {
            group: Some("vip"),
            key: &k,
            session: None,
            exclude: &[],
        };
        assert_eq!(p.pick(r, later).unwrap().account().id.as_str(), "g");
    }
}
