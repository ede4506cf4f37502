//! An in-memory store with the same rules as the DynamoDB adapter, for handler tests. One
//! lock over everything plays the part of DynamoDB's conditional writes and transactions.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};

use async_trait::async_trait;
use time::OffsetDateTime;

use super::{
    Admission, Admitted, AttemptPage, Cancelled, Claim, CountRepair, DEFAULT_RECONCILE_AFTER, DayUsage, Entry,
    EventPage, Finish, Gcra, IDEMPOTENCY_WINDOW, Lease, Page, Progress, RateDecision, RateLimiter, STEP_PAGE_BYTES,
    Slot, StepAck, StepPage, StoreError, StorePing, TaskCancel, TaskCreate, TaskDeadLetter, TaskInput, TaskRead,
    TaskReconcile, TaskRun, TenantAdmin, TenantRead, UsageRead, Wait, WebhookStore, attempt_key, cancelled_error,
    day_of, month_of,
};
use super::{AdmittedMany, BatchKey, BatchStore, Idempotency, ScheduleStore};
use crate::domain::approval::Decision;
use crate::domain::batch::BatchRecord;
use crate::domain::events::TaskEvent;
use crate::domain::fork::ForkRef;
use crate::domain::schedule::{ScheduleRecord, ScheduleState};
use crate::domain::steps::{ModelStep, Step, ToolStep};
use crate::domain::task::{TaskError, TaskId, TaskRecord, TaskStatus};
use crate::domain::tenant::{ApiKey, Limits, Tenant};
use crate::domain::webhooks::{Attempt, Endpoint};

#[derive(Debug, Default)]
struct State {
    tasks: HashMap<TaskId, (TaskRecord, Option<Lease>)>,
    tenants: HashMap<String, Tenant>,
    keys: HashMap<String, ApiKey>,
    active: HashMap<String, i64>,
    /// When each tenant's running count last moved.
    active_moved: HashMap<String, OffsetDateTime>,
    /// Open tasks, by when the reconciler should look at them.
    due: HashMap<TaskId, OffsetDateTime>,
    /// Each tenant's theoretical arrival time, in microseconds (see [`Gcra`]).
    buckets: HashMap<String, i64>,
    days: HashMap<(String, String), DayUsage>,
    months: HashMap<(String, String), u64>,
    idempotency: HashMap<(String, String), (TaskId, String, OffsetDateTime)>,
    /// Each task's event log, in `seq` order.
    events: HashMap<TaskId, Vec<TaskEvent>>,
    /// Recorded steps by task, keyed by their sort key.
    steps: HashMap<TaskId, std::collections::BTreeMap<String, Step>>,
    /// Webhook endpoints by tenant and id.
    endpoints: HashMap<(String, String), Endpoint>,
    /// Delivery attempts by task, keyed by their sort key.
    attempts: HashMap<TaskId, std::collections::BTreeMap<String, Attempt>>,
    batches: HashMap<String, BatchRecord>,
    /// Shared circuit state: until when each model's circuit is open (epoch ms).
    breakers: HashMap<String, crate::llm::SharedCircuit>,
    /// Each tenant's model use: (minute, calls, tokens).
    meters: HashMap<String, (i64, u64, u64)>,
    /// Batch idempotency keys: batch id, request hash, expiry.
    batch_keys: HashMap<(String, String), (String, String, OffsetDateTime)>,
    /// Schedules by id, in creation order.
    schedules: std::collections::BTreeMap<String, ScheduleRecord>,
}

impl State {
    /// Appends an event to its task's log (a `seq` is written once), and notes it on the record.
    fn append(&mut self, event: TaskEvent) -> Result<(), StoreError> {
        let log = self.events.entry(event.task_id).or_default();
        if log.iter().any(|e| e.seq == event.seq) {
            return Err(StoreError::Conflict);
        }
        if let Some((rec, _)) = self.tasks.get_mut(&event.task_id) {
            rec.events = rec.events.max(event.seq);
        }
        log.push(event);
        log.sort_by_key(|e| e.seq);
        Ok(())
    }

    /// The task ended (with `error`, if any): its counters move and its log says so.
    /// `held_slot`: it counted against its tenant's running cap until now (it was not
    /// waiting for input).
    fn end(&mut self, id: TaskId, status: TaskStatus, error: Option<&TaskError>, held_slot: bool, now: OffsetDateTime) {
        let Some((rec, _)) = self.tasks.get(&id) else { return };
        let (spend, seq) = (rec.spend.clone(), rec.events + 1);
        self.count_terminal(id, status, &spend, held_slot, now);
        // The log's next seq is free: nothing else appends to an ended task.
        let _ = self.append(TaskEvent::ended(id, seq, status, &spend, error, now));
    }

    fn move_active(&mut self, tenant: &str, by: i64, now: OffsetDateTime) {
        *self.active.entry(tenant.to_owned()).or_default() += by;
        self.active_moved.insert(tenant.to_owned(), now);
    }

    /// The task `id` reached `status` with `total` usage: close it, and move the tenant's
    /// counters by what they have not seen of it yet.
    fn count_terminal(
        &mut self,
        id: TaskId,
        status: TaskStatus,
        spend: &crate::domain::steps::Spend,
        held_slot: bool,
        now: OffsetDateTime,
    ) {
        let Some((rec, _)) = self.tasks.get_mut(&id) else { return };
        let delta = spend.usage.since(&rec.counted);
        rec.counted += delta;
        let by_model = spend.cost_by_model_since(&rec.counted_by_model);
        for (m, c) in &by_model {
            *rec.counted_by_model.entry(m.clone()).or_default() += c;
        }
        rec.pending = None;
        rec.waiting_until = None;
        let tenant = rec.tenant_id.clone();
        self.due.remove(&id);
        if held_slot {
            self.move_active(&tenant, -1, now);
        }
        let day = self
            .days
            .entry((tenant.clone(), day_of(now)))
            .or_insert_with(|| DayUsage { date: day_of(now), ..DayUsage::default() });
        match status {
            TaskStatus::Succeeded => day.succeeded += 1,
            TaskStatus::Failed => day.failed += 1,
            TaskStatus::Cancelled => day.cancelled += 1,
            _ => {}
        }
        day.usage += delta;
        for (m, c) in by_model {
            *day.cost_by_model.entry(m).or_default() += c;
        }
        *self.months.entry((tenant, month_of(now))).or_default() += delta.cost_nanos;
    }
}

#[derive(Debug)]
pub struct MemoryStore {
    state: Mutex<State>,
    /// When set, every call fails as if the store were down.
    down: AtomicBool,
    reconcile_after: std::time::Duration,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self { state: Mutex::default(), down: AtomicBool::new(false), reconcile_after: DEFAULT_RECONCILE_AFTER }
    }
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// How long an open task may go unchanged before the reconciler looks at it.
    pub fn with_reconcile_after(mut self, after: std::time::Duration) -> Self {
        self.reconcile_after = after;
        self
    }

    /// `running` → `queued` (a release, or a pause until `until` that is not an attempt).
    fn give_back(
        &self,
        id: TaskId,
        lease: &Lease,
        why: &TaskError,
        until: Option<OffsetDateTime>,
        now: OffsetDateTime,
    ) -> Result<(), StoreError> {
        self.with_leased(id, lease, |state, rec| {
            if rec.cancel_requested {
                return Err(StoreError::Conflict);
            }
            let (rec, held) = state.tasks.get_mut(&id).expect("checked");
            rec.status = TaskStatus::Queued;
            rec.last_error = Some(why.clone());
            rec.updated_at = now;
            if until.is_some() {
                rec.attempts = rec.attempts.saturating_sub(1);
            }
            *held = None;
            state.due.insert(id, until.unwrap_or(now) + self.reconcile_after);
            Ok(())
        })?
    }

    /// Makes every later call fail with [`StoreError::Unavailable`].
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    /// Ids of every stored task.
    pub fn ids(&self) -> Vec<TaskId> {
        self.state.lock().expect("poisoned").tasks.keys().copied().collect()
    }

    /// Creates a tenant with `limits` and returns a new key of it.
    pub fn tenant_with_key(&self, name: &str, limits: Limits) -> String {
        let now = crate::now();
        let (key, record) = crate::domain::tenant::new_key(name, now);
        let mut state = self.state.lock().expect("poisoned");
        state.tenants.insert(name.to_owned(), Tenant { tenant_id: name.to_owned(), limits, created_at: now });
        state.keys.insert(record.hash.clone(), record);
        key.expose().to_owned()
    }

    /// Stores a queued task as the submit path would, with no limits in the way.
    pub async fn insert(&self, task: &TaskRecord) {
        self.admit(task, Admission { max_running: u32::MAX, idempotency: None, slot: Slot::Take })
            .await
            .expect("inserting a task");
    }

    /// Tasks the tenant has queued or running, by the counter admissions check.
    pub fn active(&self, tenant: &str) -> i64 {
        self.state.lock().expect("poisoned").active.get(tenant).copied().unwrap_or(0)
    }

    fn lock(&self) -> Result<MutexGuard<'_, State>, StoreError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable(anyhow::anyhow!("memory store set down")));
        }
        Ok(self.state.lock().expect("poisoned"))
    }

    /// Applies `f` to the task if `lease` is its current one and it is running.
    fn with_leased<T>(
        &self,
        id: TaskId,
        lease: &Lease,
        f: impl FnOnce(&mut State, TaskRecord) -> T,
    ) -> Result<T, StoreError> {
        let mut state = self.lock()?;
        match state.tasks.get(&id) {
            Some((rec, Some(held))) if rec.status == TaskStatus::Running && held.owner == lease.owner => {
                let rec = rec.clone();
                Ok(f(&mut state, rec))
            }
            _ => Err(StoreError::Conflict),
        }
    }
}

#[async_trait]
impl TaskCreate for MemoryStore {
    async fn admit(&self, task: &TaskRecord, admission: Admission<'_>) -> Result<Admitted, StoreError> {
        let mut state = self.lock()?;
        // A slot the caller took is the created task's, or given back.
        let taken = admission.slot == Slot::Taken;
        let unslot = |state: &mut State| {
            if taken {
                state.move_active(&task.tenant_id, -1, task.created_at);
            }
        };
        if let Some(idem) = admission.idempotency {
            let key = (task.tenant_id.clone(), idem.key.to_owned());
            if let Some((id, hash, expires)) = state.idempotency.get(&key).cloned()
                && expires > task.created_at
            {
                unslot(&mut state);
                return Ok(if hash == idem.request_hash { Admitted::Replayed(id) } else { Admitted::KeyReused });
            }
        }
        let full = match admission.slot {
            Slot::Taken => false,
            Slot::Full => true,
            Slot::Take => state.active.get(&task.tenant_id).copied().unwrap_or(0) >= i64::from(admission.max_running),
        };
        if full {
            return Ok(Admitted::ConcurrencyLimited { max: admission.max_running });
        }
        if state.tasks.contains_key(&task.task_id) {
            unslot(&mut state);
            return Err(StoreError::Conflict);
        }
        if let Some(idem) = admission.idempotency {
            state.idempotency.insert(
                (task.tenant_id.clone(), idem.key.to_owned()),
                (task.task_id, idem.request_hash.to_owned(), task.created_at + IDEMPOTENCY_WINDOW),
            );
        }
        if !taken {
            state.move_active(&task.tenant_id, 1, task.created_at);
        }
        state.due.insert(task.task_id, task.created_at + self.reconcile_after);
        state.tasks.insert(task.task_id, (task.clone(), None));
        state.append(TaskEvent::accepted(task))?;
        Ok(Admitted::Created)
    }

    async fn note_fork(&self, parent: TaskId, fork: &ForkRef) -> Result<(), StoreError> {
        let mut state = self.lock()?;
        if let Some((rec, _)) = state.tasks.get_mut(&parent)
            && rec.forks.len() < crate::domain::fork::MAX_LISTED_FORKS
        {
            rec.forks.push(fork.clone());
        }
        Ok(())
    }

    async fn hold(&self, task: &TaskRecord, admission: Admission<'_>) -> Result<Admitted, StoreError> {
        let mut state = self.lock()?;
        if let Some(idem) = admission.idempotency {
            let key = (task.tenant_id.clone(), idem.key.to_owned());
            if let Some((id, hash, expires)) = state.idempotency.get(&key)
                && *expires > task.created_at
            {
                return Ok(if *hash == idem.request_hash { Admitted::Replayed(*id) } else { Admitted::KeyReused });
            }
            state
                .idempotency
                .insert(key, (task.task_id, idem.request_hash.to_owned(), task.created_at + IDEMPOTENCY_WINDOW));
        }
        if state.tasks.contains_key(&task.task_id) {
            return Err(StoreError::Conflict);
        }
        let mut held = task.clone();
        held.held = true;
        state.tasks.insert(task.task_id, (held, None));
        state.append(TaskEvent::accepted(task))?;
        Ok(Admitted::Created)
    }

    async fn release_held(
        &self,
        tenant: &str,
        holding_only: bool,
        now: OffsetDateTime,
    ) -> Result<Vec<TaskRecord>, StoreError> {
        let mut state = self.lock()?;
        let Some(limits) = state.tenants.get(tenant).map(|t| t.limits) else { return Ok(Vec::new()) };
        if holding_only && limits.over_cap != crate::domain::tenant::OverCap::Hold {
            return Ok(Vec::new());
        }
        let max = i64::from(limits.max_running);
        let free = (max - state.active.get(tenant).copied().unwrap_or(0)).max(0) as usize;
        let mut line: Vec<(OffsetDateTime, TaskId)> = state
            .tasks
            .values()
            .filter(|(r, _)| r.tenant_id == tenant && r.held && r.status == TaskStatus::Queued)
            .map(|(r, _)| (r.created_at, r.task_id))
            .collect();
        line.sort();
        let mut started = Vec::new();
        for (_, id) in line.into_iter().take(free) {
            let (rec, _) = state.tasks.get_mut(&id).expect("listed above");
            rec.held = false;
            rec.updated_at = now;
            started.push(rec.clone());
            state.move_active(tenant, 1, now);
            state.due.insert(id, now + self.reconcile_after);
        }
        Ok(started)
    }

    async fn fail_unqueued(
        &self,
        task: &TaskRecord,
        error: &TaskError,
        idempotency_key: Option<&str>,
        now: OffsetDateTime,
    ) -> Result<(), StoreError> {
        let mut state = self.lock()?;
        match state.tasks.get_mut(&task.task_id) {
            Some((rec, _)) if rec.status == TaskStatus::Queued => {
                rec.status = TaskStatus::Failed;
                rec.error = Some(error.clone());
                rec.updated_at = now;
            }
            _ => return Err(StoreError::Conflict),
        }
        if let Some(k) = idempotency_key {
            state.idempotency.remove(&(task.tenant_id.clone(), k.to_owned()));
        }
        state.end(task.task_id, TaskStatus::Failed, Some(error), true, now);
        Ok(())
    }
}

#[async_trait]
impl TaskRead for MemoryStore {
    async fn get(&self, id: TaskId) -> Result<Option<TaskRecord>, StoreError> {
        Ok(self.lock()?.tasks.get(&id).map(|(r, _)| r.clone()))
    }

    async fn get_with_prompt(&self, id: TaskId) -> Result<Option<TaskRecord>, StoreError> {
        self.get(id).await
    }

    async fn steps(&self, id: TaskId) -> Result<Vec<Step>, StoreError> {
        Ok(self.lock()?.steps.get(&id).map(|s| s.values().cloned().collect()).unwrap_or_default())
    }

    async fn step_page(&self, id: TaskId, after: Option<&str>, limit: usize) -> Result<StepPage, StoreError> {
        let state = self.lock()?;
        let Some(all) = state.steps.get(&id) else { return Ok(StepPage { steps: Vec::new(), next: None }) };
        let mut following =
            all.iter().filter(|(sk, _)| after.is_none_or(|a| sk.as_str() > a)).map(|(sk, s)| (sk.clone(), s.clone()));
        let (mut steps, mut bytes, mut last) = (Vec::new(), 0, None);
        for (sk, step) in following.by_ref() {
            let size = serde_json::to_string(&step).map(|t| t.len()).unwrap_or(0);
            if steps.len() == limit || (!steps.is_empty() && bytes + size > STEP_PAGE_BYTES) {
                return Ok(StepPage { steps, next: last });
            }
            bytes += size;
            steps.push(step);
            last = Some(sk);
        }
        Ok(StepPage { steps, next: None })
    }

    async fn events(&self, id: TaskId, after: u32, limit: usize) -> Result<EventPage, StoreError> {
        let state = self.lock()?;
        let following: Vec<TaskEvent> =
            state.events.get(&id).into_iter().flatten().filter(|e| e.seq > after).take(limit + 1).cloned().collect();
        let more = following.len() > limit;
        let events: Vec<TaskEvent> = following.into_iter().take(limit).collect();
        let next = if more { events.last().map(|e| e.seq) } else { None };
        Ok(EventPage { events, next })
    }

    async fn list(
        &self,
        tenant: &str,
        status: Option<TaskStatus>,
        limit: usize,
        after: Option<TaskId>,
    ) -> Result<Page, StoreError> {
        let state = self.lock()?;
        let mut all: Vec<&TaskRecord> = state
            .tasks
            .values()
            .map(|(r, _)| r)
            .filter(|r| r.tenant_id == tenant && status.is_none_or(|s| r.status == s))
            .filter(|r| after.is_none_or(|a| r.task_id < a))
            .collect();
        all.sort_by_key(|t| std::cmp::Reverse(t.task_id));
        let more = all.len() > limit;
        let tasks: Vec<TaskRecord> = all.into_iter().take(limit).cloned().collect();
        let next = if more { tasks.last().map(|t| t.task_id) } else { None };
        Ok(Page { tasks, next })
    }
}

#[async_trait]
impl TaskCancel for MemoryStore {
    async fn cancel(&self, id: TaskId, now: OffsetDateTime) -> Result<Cancelled, StoreError> {
        let mut state = self.lock()?;
        let Some((rec, _)) = state.tasks.get_mut(&id) else { return Ok(Cancelled::NotFound) };
        match rec.status {
            s if s.is_terminal() => Ok(Cancelled::AlreadyFinished(s)),
            TaskStatus::Queued | TaskStatus::WaitingForInput => {
                let held_slot = rec.status == TaskStatus::Queued && !rec.held;
                rec.status = TaskStatus::Cancelled;
                rec.error = Some(cancelled_error());
                rec.updated_at = now;
                state.end(id, TaskStatus::Cancelled, Some(&cancelled_error()), held_slot, now);
                Ok(Cancelled::Now)
            }
            _ => {
                rec.cancel_requested = true;
                rec.updated_at = now;
                Ok(Cancelled::Requested)
            }
        }
    }
}

#[async_trait]
impl TaskRun for MemoryStore {
    async fn claim(&self, id: TaskId, lease: &Lease, now: OffsetDateTime) -> Result<Claim, StoreError> {
        let mut state = self.lock()?;
        let Some((rec, held)) = state.tasks.get_mut(&id) else { return Ok(Claim::NotFound) };
        if rec.status.is_terminal() {
            return Ok(Claim::Terminal(rec.status));
        }
        let expired = held.as_ref().is_none_or(|l| l.until < now);
        if rec.held {
            // In its tenant's line: no delivery may start it.
            return Ok(Claim::Leased { until: now });
        }
        if rec.status == TaskStatus::Queued || (rec.status == TaskStatus::Running && expired) {
            rec.status = TaskStatus::Running;
            rec.attempts += 1;
            // The seq of the run's started event.
            rec.events += 1;
            rec.updated_at = now;
            rec.started_at.get_or_insert(now);
            *held = Some(lease.clone());
            let claimed = rec.clone();
            return Ok(Claim::Claimed(Box::new(claimed)));
        }
        Ok(Claim::Leased { until: held.as_ref().map_or(now, |l| l.until) })
    }

    async fn finish(&self, task: &TaskRecord, lease: &Lease, f: &Finish) -> Result<(), StoreError> {
        self.with_leased(task.task_id, lease, |state, _| {
            if let Some((step, event)) = &f.last_step {
                // All or nothing, as DynamoDB's transaction: nothing is written unless all can be.
                let step = Step::Model(step.clone());
                let recorded = state.steps.get(&task.task_id).is_some_and(|s| s.contains_key(&step.sort_key()));
                let logged = state
                    .events
                    .get(&task.task_id)
                    .is_some_and(|log| log.iter().any(|e| e.seq == event.seq || e.seq == f.event.seq));
                if recorded || logged {
                    return Err(StoreError::Conflict);
                }
                state.steps.entry(task.task_id).or_default().insert(step.sort_key(), step);
                state.append(event.clone())?;
            }
            state.append(f.event.clone())?;
            let (rec, held) = state.tasks.get_mut(&task.task_id).expect("checked");
            rec.status = f.status;
            rec.spend.advance_to(&f.spend);
            if f.result.is_some() {
                rec.result.clone_from(&f.result);
            }
            if f.error.is_some() {
                rec.error.clone_from(&f.error);
            }
            rec.updated_at = f.now;
            *held = None;
            state.count_terminal(task.task_id, f.status, &f.spend, true, f.now);
            Ok(())
        })?
    }

    async fn record_model_step(
        &self,
        id: TaskId,
        lease: &Lease,
        step: &ModelStep,
        p: &Progress,
    ) -> Result<StepAck, StoreError> {
        let step = Step::Model(step.clone());
        self.with_leased(id, lease, |state, _| {
            let steps = state.steps.entry(id).or_default();
            if steps.contains_key(&step.sort_key()) {
                return Err(StoreError::Conflict);
            }
            steps.insert(step.sort_key(), step.clone());
            state.append(p.event.clone())?;
            let (rec, _) = state.tasks.get_mut(&id).expect("checked");
            rec.spend.advance_to(&p.spend);
            rec.updated_at = p.now;
            Ok(if rec.cancel_requested { StepAck::CancelRequested } else { StepAck::Continue })
        })?
    }

    async fn inherit(&self, id: TaskId, steps: &[Step]) -> Result<(), StoreError> {
        let mut state = self.lock()?;
        let recorded = state.steps.entry(id).or_default();
        for step in steps {
            recorded.entry(step.sort_key()).or_insert_with(|| step.clone());
        }
        Ok(())
    }

    async fn record_started(&self, _: TaskId, event: &TaskEvent) -> Result<(), StoreError> {
        self.lock()?.append(event.clone())
    }

    async fn record_tool_step(&self, id: TaskId, step: &ToolStep) -> Result<(), StoreError> {
        let step = Step::Tool(step.clone());
        self.lock()?.steps.entry(id).or_default().entry(step.sort_key()).or_insert(step);
        Ok(())
    }

    async fn release(&self, id: TaskId, lease: &Lease, why: &TaskError, now: OffsetDateTime) -> Result<(), StoreError> {
        self.give_back(id, lease, why, None, now)
    }

    async fn pause(
        &self,
        id: TaskId,
        lease: &Lease,
        why: &TaskError,
        until: OffsetDateTime,
        now: OffsetDateTime,
    ) -> Result<(), StoreError> {
        self.give_back(id, lease, why, Some(until), now)
    }

    async fn wait(&self, task: &TaskRecord, lease: &Lease, w: &Wait) -> Result<(), StoreError> {
        self.with_leased(task.task_id, lease, |state, rec| {
            if rec.cancel_requested {
                return Err(StoreError::Conflict);
            }
            state.append(w.event.clone())?;
            let (rec, held) = state.tasks.get_mut(&task.task_id).expect("checked");
            rec.status = TaskStatus::WaitingForInput;
            rec.pending = Some(w.pending.clone());
            rec.waiting_until = Some(w.until);
            rec.updated_at = w.now;
            *held = None;
            let tenant = rec.tenant_id.clone();
            state.move_active(&tenant, -1, w.now);
            state.due.insert(task.task_id, w.until);
            Ok(())
        })?
    }
}

#[async_trait]
impl TaskInput for MemoryStore {
    async fn resume(
        &self,
        task: &TaskRecord,
        decisions: &[Decision],
        event: &TaskEvent,
        now: OffsetDateTime,
    ) -> Result<(), StoreError> {
        let mut state = self.lock()?;
        match state.tasks.get(&task.task_id) {
            Some((rec, _))
                if rec.status == TaskStatus::WaitingForInput
                    && rec.updated_at == task.updated_at
                    && rec.events == task.events => {}
            _ => return Err(StoreError::Conflict),
        }
        let steps = state.steps.entry(task.task_id).or_default();
        let decided: Vec<Step> = decisions.iter().map(|d| Step::Decision(d.clone())).collect();
        if decided.iter().any(|d| steps.contains_key(&d.sort_key())) {
            return Err(StoreError::Conflict);
        }
        for d in decided {
            steps.insert(d.sort_key(), d);
        }
        state.append(event.clone())?;
        let (rec, _) = state.tasks.get_mut(&task.task_id).expect("checked");
        let waited = now - rec.updated_at;
        rec.status = TaskStatus::Queued;
        rec.pending = None;
        rec.waiting_until = None;
        rec.attempts = 0;
        rec.started_at = rec.started_at.map(|s| s + waited);
        rec.updated_at = now;
        let tenant = rec.tenant_id.clone();
        state.move_active(&tenant, 1, now);
        state.due.insert(task.task_id, now + self.reconcile_after);
        Ok(())
    }
}

#[async_trait]
impl TaskDeadLetter for MemoryStore {
    async fn fail_abandoned(&self, id: TaskId, error: &TaskError, now: OffsetDateTime) -> Result<bool, StoreError> {
        let mut state = self.lock()?;
        let Some((rec, held)) = state.tasks.get_mut(&id) else { return Ok(false) };
        if rec.status.is_terminal() || held.as_ref().is_some_and(|l| l.until >= now) {
            return Ok(false);
        }
        let held_slot = rec.status != TaskStatus::WaitingForInput && !rec.held;
        rec.status = TaskStatus::Failed;
        rec.error = Some(error.clone());
        rec.updated_at = now;
        *held = None;
        state.end(id, TaskStatus::Failed, Some(error), held_slot, now);
        Ok(true)
    }

    async fn requeue(&self, id: TaskId, now: OffsetDateTime) -> Result<bool, StoreError> {
        let mut state = self.lock()?;
        let Some((rec, _)) = state.tasks.get_mut(&id) else { return Ok(false) };
        if rec.status != TaskStatus::Failed {
            return Ok(false);
        }
        let failed_on = day_of(rec.updated_at);
        rec.status = TaskStatus::Queued;
        rec.error = None;
        rec.updated_at = now;
        let tenant = rec.tenant_id.clone();
        if let Some(day) = state.days.get_mut(&(tenant.clone(), failed_on)) {
            day.failed = day.failed.saturating_sub(1);
        }
        state.move_active(&tenant, 1, now);
        state.due.insert(id, now + self.reconcile_after);
        let (rec, _) = state.tasks.get(&id).expect("found above");
        let queued = TaskEvent::queued(rec, rec.events + 1, now);
        state.append(queued)?;
        Ok(true)
    }
}

#[async_trait]
impl TaskReconcile for MemoryStore {
    async fn due(&self, now: OffsetDateTime, limit: usize) -> Result<Vec<TaskId>, StoreError> {
        let state = self.lock()?;
        let mut due: Vec<(OffsetDateTime, TaskId)> =
            state.due.iter().filter(|(_, at)| **at < now).map(|(id, at)| (*at, *id)).collect();
        due.sort();
        Ok(due.into_iter().take(limit).map(|(_, id)| id).collect())
    }

    async fn reschedule(
        &self,
        task: &TaskRecord,
        due: OffsetDateTime,
        resent: bool,
        _now: OffsetDateTime,
    ) -> Result<bool, StoreError> {
        let mut state = self.lock()?;
        let Some((rec, _)) = state.tasks.get_mut(&task.task_id) else { return Ok(false) };
        if rec.status != task.status || rec.updated_at != task.updated_at || rec.status.is_terminal() {
            return Ok(false);
        }
        if resent {
            rec.resends += 1;
        }
        state.due.insert(task.task_id, due);
        Ok(true)
    }

    async fn put_off_while_leased(&self, id: TaskId, now: OffsetDateTime) -> Result<bool, StoreError> {
        let mut state = self.lock()?;
        let until = match state.tasks.get(&id) {
            Some((rec, Some(lease))) if rec.status == TaskStatus::Running && lease.until > now => lease.until,
            _ => return Ok(false),
        };
        state.due.insert(id, until + self.reconcile_after);
        Ok(true)
    }

    async fn tenants(&self) -> Result<Vec<String>, StoreError> {
        Ok(self.lock()?.tenants.keys().cloned().collect())
    }

    async fn repair_counts(
        &self,
        quiet: std::time::Duration,
        now: OffsetDateTime,
    ) -> Result<Vec<CountRepair>, StoreError> {
        let mut state = self.lock()?;
        let mut open: HashMap<String, i64> = state.tenants.keys().map(|t| (t.clone(), 0)).collect();
        let holds_slot = |r: &TaskRecord| !r.status.is_terminal() && r.status != TaskStatus::WaitingForInput && !r.held;
        for (rec, _) in state.tasks.values().filter(|(r, _)| holds_slot(r)) {
            *open.entry(rec.tenant_id.clone()).or_default() += 1;
        }
        let mut repairs = Vec::new();
        let mut tenants: Vec<_> = open.into_iter().collect();
        tenants.sort();
        for (tenant, truth) in tenants {
            let counted = state.active.get(&tenant).copied().unwrap_or(0);
            if counted == truth {
                continue;
            }
            let settled = state.active_moved.get(&tenant).is_none_or(|at| *at < now - quiet);
            if settled {
                state.active.insert(tenant.clone(), truth);
                state.active_moved.insert(tenant.clone(), now);
            }
            repairs.push(CountRepair { tenant, counted, open: truth, repaired: settled });
        }
        Ok(repairs)
    }
}

#[async_trait]
impl StorePing for MemoryStore {
    async fn ping(&self) -> Result<(), StoreError> {
        self.lock().map(drop)
    }
}

#[async_trait]
impl TenantRead for MemoryStore {
    async fn api_key(&self, hash: &str) -> Result<Option<ApiKey>, StoreError> {
        Ok(self.lock()?.keys.get(hash).cloned())
    }

    async fn tenant(&self, tenant_id: &str) -> Result<Option<Tenant>, StoreError> {
        Ok(self.lock()?.tenants.get(tenant_id).cloned())
    }
}

#[async_trait]
impl TenantAdmin for MemoryStore {
    async fn put_tenant(&self, tenant: &Tenant) -> Result<(), StoreError> {
        self.lock()?.tenants.insert(tenant.tenant_id.clone(), tenant.clone());
        Ok(())
    }

    async fn put_key(&self, key: &ApiKey) -> Result<(), StoreError> {
        let mut state = self.lock()?;
        if state.keys.contains_key(&key.hash) {
            return Err(StoreError::Conflict);
        }
        state.keys.insert(key.hash.clone(), key.clone());
        Ok(())
    }

    async fn list_keys(&self, tenant: Option<&str>) -> Result<Vec<ApiKey>, StoreError> {
        let mut keys: Vec<ApiKey> =
            self.lock()?.keys.values().filter(|k| tenant.is_none_or(|t| t == k.tenant_id)).cloned().collect();
        keys.sort_by(|a, b| a.key_id.cmp(&b.key_id));
        Ok(keys)
    }

    async fn revoke_key(&self, key_id: &str, now: OffsetDateTime) -> Result<Option<ApiKey>, StoreError> {
        let mut state = self.lock()?;
        Ok(state.keys.values_mut().find(|k| k.key_id == key_id).map(|k| {
            k.revoked_at.get_or_insert(now);
            k.clone()
        }))
    }
}

#[async_trait]
impl RateLimiter for MemoryStore {
    async fn take(&self, tenant: &str, limits: &Limits, now: OffsetDateTime) -> Result<RateDecision, StoreError> {
        let mut state = self.lock()?;
        let now_us = (now.unix_timestamp_nanos() / 1_000) as i64;
        let (next, decision) = Gcra::new(limits).decide(state.buckets.get(tenant).copied(), now_us);
        if let Some(tat) = next {
            state.buckets.insert(tenant.to_owned(), tat);
        }
        Ok(decision)
    }

    async fn take_with_slot(&self, tenant: &str, limits: &Limits, now: OffsetDateTime) -> Result<Entry, StoreError> {
        let mut state = self.lock()?;
        let now_us = (now.unix_timestamp_nanos() / 1_000) as i64;
        let (next, rate) = Gcra::new(limits).decide(state.buckets.get(tenant).copied(), now_us);
        let Some(tat) = next else { return Ok(Entry { rate, slot: Slot::Take }) };
        state.buckets.insert(tenant.to_owned(), tat);
        if state.active.get(tenant).copied().unwrap_or(0) >= i64::from(limits.max_running) {
            return Ok(Entry { rate, slot: Slot::Full });
        }
        state.move_active(tenant, 1, now);
        Ok(Entry { rate, slot: Slot::Taken })
    }

    async fn give_slot_back(&self, tenant: &str) {
        if let Ok(mut state) = self.lock() {
            state.move_active(tenant, -1, crate::now());
        }
    }

    async fn take_up_to(
        &self,
        tenant: &str,
        limits: &Limits,
        want: u32,
        now: OffsetDateTime,
    ) -> Result<u32, StoreError> {
        let mut state = self.lock()?;
        let now_us = (now.unix_timestamp_nanos() / 1_000) as i64;
        let (granted, tat) = Gcra::new(limits).decide_many(state.buckets.get(tenant).copied(), now_us, want);
        if granted > 0 {
            state.buckets.insert(tenant.to_owned(), tat);
        }
        Ok(granted)
    }
}

#[async_trait]
impl BatchStore for MemoryStore {
    async fn admit_many(&self, tasks: &[TaskRecord], max_running: u32) -> Result<AdmittedMany, StoreError> {
        let mut admitted = 0;
        for task in tasks {
            match self.admit(task, Admission { max_running, idempotency: None, slot: Slot::Take }).await {
                Ok(Admitted::Created) => admitted += 1,
                Ok(_) => break,
                Err(_) if admitted > 0 => return Ok(AdmittedMany { admitted, interrupted: true }),
                Err(e) => return Err(e),
            }
        }
        Ok(AdmittedMany { admitted, interrupted: false })
    }

    async fn reserve_batch_key(
        &self,
        tenant: &str,
        key: Idempotency<'_>,
        batch_id: &str,
        now: OffsetDateTime,
    ) -> Result<BatchKey, StoreError> {
        let mut state = self.lock()?;
        let slot = (tenant.to_owned(), key.key.to_owned());
        if let Some((id, hash, expires)) = state.batch_keys.get(&slot)
            && *expires > now
        {
            return Ok(if hash == key.request_hash { BatchKey::Replayed(id.clone()) } else { BatchKey::KeyReused });
        }
        state.batch_keys.insert(slot, (batch_id.to_owned(), key.request_hash.to_owned(), now + IDEMPOTENCY_WINDOW));
        Ok(BatchKey::Reserved)
    }

    async fn put_batch(&self, batch: &BatchRecord) -> Result<(), StoreError> {
        self.lock()?.batches.insert(batch.batch_id.clone(), batch.clone());
        Ok(())
    }

    async fn batch(&self, tenant: &str, batch_id: &str) -> Result<Option<BatchRecord>, StoreError> {
        Ok(self.lock()?.batches.get(batch_id).filter(|b| b.tenant_id == tenant).cloned())
    }

    async fn tasks(&self, ids: &[TaskId]) -> Result<Vec<TaskRecord>, StoreError> {
        let state = self.lock()?;
        Ok(ids.iter().filter_map(|id| state.tasks.get(id).map(|(r, _)| r.clone())).collect())
    }

    async fn statuses(&self, ids: &[TaskId]) -> Result<Vec<(TaskId, TaskStatus)>, StoreError> {
        Ok(self.tasks(ids).await?.into_iter().map(|t| (t.task_id, t.status)).collect())
    }
}

#[async_trait]
impl UsageRead for MemoryStore {
    async fn month_cost(&self, tenant: &str, month: &str) -> Result<u64, StoreError> {
        Ok(self.lock()?.months.get(&(tenant.to_owned(), month.to_owned())).copied().unwrap_or(0))
    }

    async fn days(&self, tenant: &str, from: &str, to: &str) -> Result<Vec<DayUsage>, StoreError> {
        let state = self.lock()?;
        let mut days: Vec<DayUsage> = state
            .days
            .iter()
            .filter(|((t, d), _)| t == tenant && d.as_str() >= from && d.as_str() <= to)
            .map(|(_, u)| u.clone())
            .collect();
        days.sort_by(|a, b| a.date.cmp(&b.date));
        Ok(days)
    }
}

#[async_trait]
impl ScheduleStore for MemoryStore {
    async fn create_schedule(&self, schedule: &ScheduleRecord, max: usize) -> Result<bool, StoreError> {
        let mut state = self.lock()?;
        if state.schedules.values().filter(|s| s.tenant_id == schedule.tenant_id).count() >= max {
            return Ok(false);
        }
        let stored = ScheduleRecord { version: 1, ..schedule.clone() };
        state.schedules.insert(schedule.schedule_id.clone(), stored);
        Ok(true)
    }

    async fn schedule(&self, tenant: &str, id: &str) -> Result<Option<ScheduleRecord>, StoreError> {
        Ok(self.lock()?.schedules.get(id).filter(|s| s.tenant_id == tenant).cloned())
    }

    async fn schedules(&self, tenant: &str) -> Result<Vec<ScheduleRecord>, StoreError> {
        Ok(self.lock()?.schedules.values().filter(|s| s.tenant_id == tenant).cloned().collect())
    }

    async fn update_schedule(&self, schedule: &ScheduleRecord) -> Result<(), StoreError> {
        let mut state = self.lock()?;
        match state.schedules.get_mut(&schedule.schedule_id) {
            Some(stored) if stored.version == schedule.version => {
                *stored = ScheduleRecord { version: schedule.version + 1, ..schedule.clone() };
                Ok(())
            }
            _ => Err(StoreError::Conflict),
        }
    }

    async fn delete_schedule(&self, tenant: &str, id: &str) -> Result<bool, StoreError> {
        let mut state = self.lock()?;
        if state.schedules.get(id).is_none_or(|s| s.tenant_id != tenant) {
            return Ok(false);
        }
        Ok(state.schedules.remove(id).is_some())
    }

    async fn due_schedules(&self, now: OffsetDateTime, limit: usize) -> Result<Vec<(String, String)>, StoreError> {
        let state = self.lock()?;
        let mut due: Vec<_> = state
            .schedules
            .values()
            .filter(|s| s.state == ScheduleState::Active && s.next_run_at.is_some_and(|t| t <= now))
            .collect();
        due.sort_by_key(|s| s.next_run_at);
        Ok(due.into_iter().take(limit).map(|s| (s.tenant_id.clone(), s.schedule_id.clone())).collect())
    }
}

#[async_trait]
impl WebhookStore for MemoryStore {
    async fn put_endpoint(&self, endpoint: &Endpoint) -> Result<(), StoreError> {
        self.lock()?.endpoints.insert((endpoint.tenant_id.clone(), endpoint.id.clone()), endpoint.clone());
        Ok(())
    }

    async fn endpoints(&self, tenant: &str) -> Result<Vec<Endpoint>, StoreError> {
        let mut all: Vec<Endpoint> =
            self.lock()?.endpoints.values().filter(|e| e.tenant_id == tenant).cloned().collect();
        all.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(all)
    }

    async fn endpoint(&self, tenant: &str, id: &str) -> Result<Option<Endpoint>, StoreError> {
        Ok(self.lock()?.endpoints.get(&(tenant.to_owned(), id.to_owned())).cloned())
    }

    async fn delete_endpoint(&self, tenant: &str, id: &str) -> Result<bool, StoreError> {
        Ok(self.lock()?.endpoints.remove(&(tenant.to_owned(), id.to_owned())).is_some())
    }

    async fn record_attempt(&self, task: TaskId, attempt: &Attempt) -> Result<(), StoreError> {
        self.lock()?.attempts.entry(task).or_default().insert(attempt_key(attempt), attempt.clone());
        Ok(())
    }

    async fn attempts(&self, task: TaskId, after: Option<&str>, limit: usize) -> Result<AttemptPage, StoreError> {
        let state = self.lock()?;
        let following: Vec<&Attempt> = state
            .attempts
            .get(&task)
            .into_iter()
            .flat_map(|m| m.iter())
            .filter(|(k, _)| after.is_none_or(|a| k.as_str() > a))
            .map(|(_, a)| a)
            .take(limit + 1)
            .collect();
        let more = following.len() > limit;
        let attempts: Vec<Attempt> = following.into_iter().take(limit).cloned().collect();
        let next = if more { attempts.last().map(attempt_key) } else { None };
        Ok(AttemptPage { attempts, next })
    }
}

#[async_trait]
impl crate::llm::BreakerBoard for MemoryStore {
    async fn shared(&self, model: &str) -> anyhow::Result<crate::llm::SharedCircuit> {
        Ok(self.lock()?.breakers.get(model).copied().unwrap_or_default())
    }

    async fn open(&self, model: &str, until_ms: i64) -> anyhow::Result<()> {
        self.lock()?.breakers.entry(model.to_owned()).or_default().open_until_ms = Some(until_ms);
        Ok(())
    }

    async fn throttle(&self, model: &str, until_ms: i64) -> anyhow::Result<()> {
        self.lock()?.breakers.entry(model.to_owned()).or_default().throttled_until_ms = Some(until_ms);
        Ok(())
    }
}

#[async_trait]
impl super::ModelMeter for MemoryStore {
    async fn take_model_call(
        &self,
        tenant: &str,
        limits: &Limits,
        now: OffsetDateTime,
    ) -> Result<super::Metered, StoreError> {
        let minute = super::minute_of(now);
        let mut state = self.lock()?;
        let meter = state.meters.entry(tenant.to_owned()).or_insert((minute, 0, 0));
        if meter.0 < minute {
            *meter = (minute, 0, 0);
        }
        if !super::meter_allows(limits, meter.1, meter.2) {
            return Ok(super::Metered::WaitUntil(super::minute_start(minute + 1)));
        }
        meter.1 += 1;
        Ok(super::Metered::Go)
    }

    async fn count_model_tokens(&self, tenant: &str, tokens: u64, at: OffsetDateTime) -> Result<(), StoreError> {
        let minute = super::minute_of(at);
        if let Some(meter) = self.lock()?.meters.get_mut(tenant).filter(|m| m.0 == minute) {
            meter.2 += tokens;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_memory_store_keeps_the_same_rules_as_dynamodb() {
        let after = std::time::Duration::from_secs(60);
        super::super::conformance::run(&MemoryStore::new().with_reconcile_after(after), after).await;
    }
}
