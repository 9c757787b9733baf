//! The dialect's place in the relay: client messages are read one at a time, statements
//! classified, DSQL's transaction rules followed, and a refused statement replaced by one
//! that makes PostgreSQL itself fail at that very point; the failure is then rewritten, on
//! the way back, into DSQL's SQLSTATE and words.
//!
//! **Why PostgreSQL fails the statement itself.** The session is then in exactly the state
//! PostgreSQL (and DSQL) leaves it in after an error — inside a transaction the transaction
//! is failed, later statements get 25P02, `COMMIT` answers `ROLLBACK`; in the extended
//! protocol everything up to `Sync` is skipped; ReadyForQuery carries the right status —
//! and pipelined responses stay in order, with no second writer to the client. The stand-in
//! is `SELECT <marker>`, where the marker is a column name no table has, unique to the
//! connection and the refusal: PostgreSQL fails it during parse analysis (42703), before
//! anything runs, both as a simple Query and as a Parse. In a multi-statement Query, the
//! statements before the refused one still run (the implicit transaction then fails, as on
//! DSQL).
//!
//! **Transaction state** is followed twice. The client side follows the client's own
//! statements (`BEGIN`, `COMMIT`, `ROLLBACK`, `AND CHAIN`; a Query string or a run up to
//! `Sync` is one implicit transaction outside `BEGIN`) to decide what to send; where an error
//! of PostgreSQL's own makes that guess wrong, the transaction is failed anyway and PostgreSQL
//! refuses everything until it ends. The response filter judges every answer with the state
//! that answer belongs to, read from the response stream itself: ReadyForQuery's status
//! (`I`, `T`, `E`) and the `BEGIN` / `COMMIT` / `ROLLBACK` command tags in between — never
//! with the client side's latest guess, which may already describe a later, pipelined
//! message. Limits that must hold whatever was pipelined (3,000 rows, [`super::rows`]) are
//! counted by PostgreSQL itself in the same flight as the statement.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _, BufReader};
use tokio::time::Instant;

use super::iam::IamOp;
use super::jobs::{JobKind, Jobs};
use super::occ::{self, Occ, OccFilter, SchemaVersion, Verb};
use super::parse::{Classified, Classifier};
use super::rules::{FEATURE_NOT_SUPPORTED, Kind, Refusal};
use crate::local::clock::Clock;

/// Largest message a client may send (DSQL's limit: 10 MiB). Past it the connection closes,
/// as DSQL was seen to do.
pub(crate) const MAX_CLIENT_MESSAGE: usize = 10 << 20;
/// Refusals awaiting their error from PostgreSQL (ones PostgreSQL skipped are forgotten
/// oldest first).
const MAX_PENDING_REFUSALS: usize = 256;
/// Largest ErrorResponse held back to be checked for a marker; larger ones pass as they are.
const MAX_HELD_ERROR: usize = 64 * 1024;
/// The statement name a refusal at Execute is parsed under (never created: it fails).
const REFUSAL_STATEMENT: &str = "dsql_pgx_refusal";

/// What the two directions of a connection share: the refusals handed to PostgreSQL as
/// markers, and the relay's own checks whose answers are yet to come.
#[derive(Debug)]
pub(crate) struct Refusals {
    prefix: String,
    next: u64,
    pending: BTreeMap<u64, Refusal>,
    /// Row checks and baselines ([`super::rows`]) sent and not yet answered, each with the
    /// number of the ReadyForQuery that ends its flight (by then it was answered or skipped).
    checks: VecDeque<u64>,
    /// The transaction is failed, as the last ReadyForQuery or an error inside `BEGIN` since
    /// said (its COMMIT is not measured).
    failed: bool,
    /// Optimistic concurrency.
    occ: Occ,
}

impl Refusals {
    /// A new set with a marker prefix no client can guess, for a connection of the
    /// endpoint whose schema changes `schema` counts.
    pub(crate) fn new(schema: Arc<SchemaVersion>) -> Arc<Mutex<Self>> {
        let nonce: u64 = rand::random();
        Arc::new(Mutex::new(Self {
            prefix: format!("dsql_pgx_refusal_{nonce:016x}_"),
            next: 0,
            pending: BTreeMap::new(),
            checks: VecDeque::new(),
            failed: false,
            occ: Occ::new(schema),
        }))
    }

    /// Registers `r`; returns the statement that makes PostgreSQL fail in its place.
    pub(super) fn stand_in(&mut self, r: Refusal) -> String {
        let id = self.next;
        self.next += 1;
        self.pending.insert(id, r);
        while self.pending.len() > MAX_PENDING_REFUSALS {
            self.pending.pop_first();
        }
        format!("SELECT {}{id}", self.prefix)
    }

    /// The column name standing for `job_id` in the row of an async job of `kind`: the
    /// filter renames it and gives the statement DSQL's command tag.
    pub(super) fn job_marker(&self, kind: JobKind) -> String {
        match kind {
            JobKind::IndexBuild => format!("{}job_ci", self.prefix),
            JobKind::Validate => format!("{}job_at", self.prefix),
        }
    }

    /// The column name of an `AWS IAM` statement's call: the filter answers the statement
    /// with DSQL's tag and no rows.
    pub(super) fn iam_marker(&self, op: IamOp) -> String {
        match op {
            IamOp::Grant => format!("{}iam_grant", self.prefix),
            IamOp::Revoke => format!("{}iam_revoke", self.prefix),
        }
    }

    /// The `AWS IAM` statement a RowDescription's one column name stands for.
    fn iam_of_marker(&self, name: &[u8]) -> Option<IamOp> {
        match name.strip_prefix(self.prefix.as_bytes())? {
            b"iam_grant" => Some(IamOp::Grant),
            b"iam_revoke" => Some(IamOp::Revoke),
            _ => None,
        }
    }

    /// The kind of async job a RowDescription's one column name stands for.
    fn job_of_marker(&self, name: &[u8]) -> Option<JobKind> {
        match name.strip_prefix(self.prefix.as_bytes())? {
            b"job_ci" => Some(JobKind::IndexBuild),
            b"job_at" => Some(JobKind::Validate),
            _ => None,
        }
    }

    /// A row check or baseline ([`super::rows`]) is sent in flight number `flight` (the
    /// ReadyForQuery that ends it): its answers are the relay's.
    pub(super) fn expect_check(&mut self, flight: u64) {
        self.checks.push_back(flight);
    }

    /// The statement name the relay's extended-protocol checks are parsed under.
    fn check_statement(&self) -> String {
        format!("{}rows", self.prefix)
    }

    /// The refusal a PostgreSQL error message stands for, if it is one of ours.
    fn take(&mut self, message: &str) -> Option<Refusal> {
        let rest = message.strip_prefix("column \"")?;
        let rest = rest.strip_prefix(self.prefix.as_str())?;
        let id: u64 = rest.strip_suffix("\" does not exist")?.parse().ok()?;
        self.pending.remove(&id)
    }
}

fn lock(r: &Mutex<Refusals>) -> std::sync::MutexGuard<'_, Refusals> {
    r.lock().unwrap_or_else(|p| p.into_inner())
}

/// The transaction as DSQL's rules count it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Transaction {
    /// Inside `BEGIN` ... `COMMIT`.
    pub(crate) explicit: bool,
    /// A DDL statement ran in it.
    pub(crate) ddl: bool,
    /// A DML statement ran in it.
    pub(crate) dml: bool,
    /// When `BEGIN` ran.
    pub(crate) started: Option<Instant>,
}

impl Transaction {
    /// Counts a statement of `kind` run at `now`, or refuses it as DSQL does (§7).
    pub(crate) fn apply(&mut self, kind: Kind, now: Instant) -> Result<(), Refusal> {
        match kind {
            Kind::Begin => {
                if !self.explicit {
                    self.started = Some(now);
                }
                self.explicit = true;
            }
            Kind::End => *self = Self::default(),
            Kind::Ddl if self.ddl => return Err(multiple_ddl()),
            Kind::Ddl | Kind::Dml if self.ddl || self.dml && kind == Kind::Ddl => {
                return Err(ddl_and_dml());
            }
            Kind::Ddl => self.ddl = true,
            Kind::Dml => self.dml = true,
            Kind::Other => {}
        }
        Ok(())
    }

    /// The end of an implicit transaction (a Query string, a run up to Sync).
    fn end_implicit(&mut self) {
        if !self.explicit {
            *self = Self::default();
        }
    }
}

fn multiple_ddl() -> Refusal {
    Refusal::new(
        FEATURE_NOT_SUPPORTED,
        "multiple ddl statements not supported in a transaction",
    )
}

fn ddl_and_dml() -> Refusal {
    Refusal::new(
        FEATURE_NOT_SUPPORTED,
        "ddl and dml are not supported in the same transaction",
    )
}

/// What the client's side of a connection knows.
pub(crate) struct ClientSide {
    classifier: Arc<Classifier>,
    refusals: Arc<Mutex<Refusals>>,
    tx: Transaction,
    /// Prepared statements by name.
    statements: HashMap<Vec<u8>, Prepared>,
    /// Portals by name: their statement's.
    portals: HashMap<Vec<u8>, Prepared>,
    /// DSQL's transaction age limit.
    max_age: Duration,
    /// The job runner for `ASYNC` statements, and the role the client logged in as.
    jobs: Option<(Arc<Jobs>, String)>,
    /// The endpoint's clock, for that age.
    clock: Clock,
    /// Messages sent to PostgreSQL that end a flight (Query, Sync, FunctionCall): each is
    /// answered by one ReadyForQuery.
    flights_sent: u64,
    /// OCC's flag for a due `ROLLBACK TO SAVEPOINT`.
    rollback_due: Arc<std::sync::atomic::AtomicBool>,
}

/// What the relay knows of a prepared statement (and of a portal bound to it).
#[derive(Debug, Clone, Copy, Default)]
struct Prepared {
    /// The kind of its one statement.
    kind: Kind,
    /// It is an end of transaction `AND CHAIN`.
    chains: bool,
    /// It calls what may be the client's own function (the row check follows it).
    user_code: bool,
    verb: Verb,
}

use crate::local::wire::message;

/// Whether a client message of type `tag` is answered by a ReadyForQuery.
fn ends_flight(tag: u8) -> bool {
    matches!(tag, b'Q' | b'S' | b'F')
}

/// How many of the messages in `buf` (whole messages) are answered by a ReadyForQuery.
fn flights_in(mut buf: &[u8]) -> u64 {
    let mut n = 0;
    while let [tag, a, b, c, d, ..] = *buf {
        n += u64::from(ends_flight(tag));
        let len = u32::from_be_bytes([a, b, c, d]) as usize;
        buf = buf.get(1 + len..).unwrap_or(&[]);
    }
    n
}

/// Splits a NUL-terminated string off the front of `buf`.
fn cstr(buf: &[u8]) -> Option<(&[u8], &[u8])> {
    let end = buf.iter().position(|&b| b == 0)?;
    Some((&buf[..end], &buf[end + 1..]))
}

impl ClientSide {
    /// A connection's client side.
    pub(crate) fn new(
        classifier: Arc<Classifier>,
        refusals: Arc<Mutex<Refusals>>,
        max_age: Duration,
        clock: Clock,
    ) -> Self {
        let rollback_due = occ::rollback_due_flag(&lock(&refusals).occ);
        Self {
            classifier,
            refusals,
            flights_sent: 0,
            rollback_due,
            tx: Transaction::default(),
            statements: HashMap::new(),
            portals: HashMap::new(),
            max_age,
            jobs: None,
            clock,
        }
    }

    /// Runs `ASYNC` statements as jobs of `jobs`, built as `role`.
    pub(crate) fn with_jobs(mut self, jobs: Arc<Jobs>, role: String) -> Self {
        self.jobs = Some((jobs, role));
        self
    }

    /// Why the transaction is over before this statement runs: its age.
    fn transaction_failed(&mut self) -> Option<Refusal> {
        let started = self.tx.started.filter(|_| self.tx.explicit)?;
        let age = self.clock.instant().saturating_duration_since(started);
        if age <= self.max_age {
            return None;
        }
        self.tx.started = None;
        let limit = self.max_age.as_secs();
        Some(Refusal {
            code: "54000",
            message: format!("transaction age limit of {limit}s exceeded"),
            detail: Some(format!(
                "Current transaction age {}s exceeds {limit}s",
                age.as_secs()
            )),
        })
    }

    fn stand_in_query(&self, r: Refusal) -> Vec<u8> {
        let mut b = lock(&self.refusals).stand_in(r).into_bytes();
        b.push(0);
        message(b'Q', &b)
    }

    /// The text to run for a simple Query: the client's, or up to the refused statement
    /// followed by its stand-in; and where the client's statements that run end.
    fn plan_query(&mut self, sql: &str, c: &Classified) -> (String, usize) {
        let text = c.rewritten.as_deref().unwrap_or(sql);
        let mut tx = self.tx;
        let now = self.clock.instant();
        for st in &c.statements {
            let verdict = st.verdict.clone().and_then(|k| tx.apply(k, now));
            if verdict == Ok(()) && st.chains {
                tx.apply(Kind::Begin, now).ok();
            }
            if let Err(r) = verdict {
                tx.end_implicit();
                self.tx = tx;
                let stand_in = lock(&self.refusals).stand_in(r);
                let before = text.get(..st.start).unwrap_or("");
                return (format!("{before}{stand_in}"), before.len());
            }
        }
        tx.end_implicit();
        self.tx = tx;
        (text.to_owned(), text.len())
    }

    /// Rewrites one client message; `None` forwards it as it is.
    pub(crate) async fn rewrite(&mut self, tag: u8, body: &[u8]) -> Option<Vec<u8>> {
        if !matches!(tag, b'Q' | b'P' | b'E') {
            // Bind, Sync, Close, Describe, ...: sent on as they are (after a due
            // `ROLLBACK TO`), with one look at the shared state (this is every query's path).
            self.track(tag, body);
            let before = self.rollback_due();
            self.flights_sent +=
                before.as_deref().map_or(0, flights_in) + u64::from(ends_flight(tag));
            return before.map(|mut b| {
                b.extend(message(tag, body));
                b
            });
        }
        let before = self.rollback_due();
        // A due `ROLLBACK TO` is a flight of its own, before the message's checks.
        self.flights_sent += before.as_deref().map_or(0, flights_in);
        let out = self.rewrite_message(tag, body).await;
        self.flights_sent += match &out {
            None => u64::from(ends_flight(tag)),
            Some(m) => flights_in(m),
        };
        match before {
            None => out,
            Some(mut b) => {
                b.extend(out.unwrap_or_else(|| message(tag, body)));
                Some(b)
            }
        }
    }

    /// The `ROLLBACK TO SAVEPOINT` a conflict left due, if any (no lock unless one is).
    fn rollback_due(&self) -> Option<Vec<u8>> {
        if !self.rollback_due.load(std::sync::atomic::Ordering::Acquire) {
            return None;
        }
        occ::before_message(&mut lock(&self.refusals).occ)
    }

    /// An Execute (`tag`, `body`) of a statement of `kind` that runs: a statement that may
    /// modify rows (`modifies`) is followed by the row check, an end of transaction by the baseline of
    /// the one that may follow before `Sync` ([`super::rows`]); where a transaction
    /// `begins`, by its baseline (which also takes its snapshot, as DSQL does at `BEGIN`)
    /// and OCC's savepoint ([`super::occ`]).
    fn check_after_execute(
        &self,
        tag: u8,
        body: &[u8],
        kind: Kind,
        modifies: bool,
        begins: bool,
    ) -> Option<Vec<u8>> {
        let sql = match kind {
            _ if modifies => super::rows::CHECK,
            Kind::End => super::rows::BASELINE,
            Kind::Begin if begins => super::rows::BASELINE,
            _ => return None,
        };
        let mut shared = lock(&self.refusals);
        let name = shared.check_statement();
        let mut out = message(tag, body);
        let flight = self.flights_sent + 1;
        shared.expect_check(flight);
        out.extend(super::rows::extended(&name, sql));
        if begins {
            shared.expect_check(flight);
            out.extend(super::rows::extended(&name, occ::SAVEPOINT_SQL));
        }
        Some(out)
    }

    /// The OCC hook for a simple Query `c` of `sql`: the message to send instead, or the
    /// refusal of its first statement.
    fn occ_query(&self, sql: &str, c: &Classified) -> Result<Option<Vec<u8>>, Refusal> {
        let mut kinds = c.statements.iter().map(|s| s.verdict.clone());
        let Some(Ok(first)) = kinds.next() else {
            return Ok(None);
        };
        let mut ddl = first == Kind::Ddl;
        for k in kinds {
            match k {
                Ok(k) => ddl |= k == Kind::Ddl,
                Err(_) => return Ok(None),
            }
        }
        let only = c.statements.len() == 1;
        let occ = &mut lock(&self.refusals).occ;
        occ::on_query(occ, sql, first, only, ddl, self.tx.explicit)
    }

    /// Follows a message that is sent on as it is: Bind, Close, Sync, ...
    fn track(&mut self, tag: u8, body: &[u8]) {
        match tag {
            b'B' => {
                let Some((portal, rest)) = cstr(body) else {
                    return;
                };
                let Some((stmt, _)) = cstr(rest) else { return };
                let prepared = self.statements.get(stmt).copied().unwrap_or_default();
                // The unnamed portal is bound again and again: no new key each time.
                match self.portals.get_mut(portal) {
                    Some(p) => *p = prepared,
                    None => {
                        self.portals.insert(portal.to_vec(), prepared);
                    }
                }
            }
            b'C' => {
                let Some((&what, rest)) = body.split_first() else {
                    return;
                };
                let Some((name, _)) = cstr(rest) else { return };
                match what {
                    b'S' => self.statements.remove(name),
                    b'P' => self.portals.remove(name),
                    _ => None,
                };
            }
            b'S' => self.tx.end_implicit(),
            _ => {}
        }
    }

    async fn rewrite_message(&mut self, tag: u8, body: &[u8]) -> Option<Vec<u8>> {
        match tag {
            b'Q' => {
                let (sql, _) = cstr(body)?;
                let sql = std::str::from_utf8(sql).ok()?;
                let c = self.classifier.classify(sql).await;
                if let Some(r) = self.transaction_failed() {
                    let ends = c
                        .statements
                        .first()
                        .is_some_and(|s| s.verdict == Ok(Kind::End));
                    if ends {
                        // COMMIT of a failed transaction answers ROLLBACK.
                        self.tx = Transaction::default();
                        return Some(message(b'Q', b"ROLLBACK\0"));
                    }
                    return Some(self.stand_in_query(r));
                }
                // A COMMIT of a transaction that wrote is measured (DSQL's 10 MiB).
                let measure = self.tx.explicit && self.tx.dml && !lock(&self.refusals).failed;
                let instead = match self.occ_query(sql, &c) {
                    Ok(instead) => instead,
                    Err(r) => return Some(self.stand_in_query(r)),
                };
                let (text, ran) = self.plan_query(sql, &c);
                // OCC's answer stands instead of the text: no job is submitted for it.
                let text = match instead {
                    None => {
                        let jobs = self.jobs.as_ref().map(|(j, r)| (&**j, r.as_str()));
                        super::jobs::rewrite_in_query(
                            jobs,
                            &c,
                            text,
                            ran,
                            &self.refusals,
                            super::jobs::Rewrite::Query {
                                measure,
                                flight: self.flights_sent + 1,
                            },
                        )
                        .await
                    }
                    Some(_) => text,
                };
                if instead.is_some() {
                    return instead;
                }
                if text == sql {
                    return None;
                }
                let mut b = text.into_bytes();
                b.push(0);
                Some(message(b'Q', &b))
            }
            b'P' => {
                let (name, rest) = cstr(body)?;
                let (sql, params) = cstr(rest)?;
                let sql = std::str::from_utf8(sql).ok()?;
                let c = self.classifier.classify(sql).await;
                let refused = c.statements.iter().find_map(|s| s.verdict.clone().err());
                let (text, tail): (String, &[u8]) = match refused {
                    Some(r) => (lock(&self.refusals).stand_in(r), &[0, 0]),
                    None => {
                        let kind = match c.statements.as_slice() {
                            [one] => one.verdict.clone().unwrap_or(Kind::Other),
                            _ => Kind::Other,
                        };
                        let first = c.statements.first();
                        let chains = kind == Kind::End && first.is_some_and(|st| st.chains);
                        let user_code = first.is_some_and(|st| st.user_code);
                        let verb = Verb::of(sql);
                        let prepared = Prepared {
                            kind,
                            chains,
                            user_code,
                            verb,
                        };
                        self.statements.insert(name.to_vec(), prepared);
                        let text = c.rewritten.clone().unwrap_or_else(|| sql.to_owned());
                        // One statement (PostgreSQL refuses more in a Parse): an ASYNC one
                        // is submitted now, a version question answered.
                        let text = match (&self.jobs, c.statements.len()) {
                            (Some((jobs, role)), 1) => {
                                let len = text.len();
                                super::jobs::rewrite_in_query(
                                    Some((&**jobs, role.as_str())),
                                    &c,
                                    text,
                                    len,
                                    &self.refusals,
                                    super::jobs::Rewrite::Parse,
                                )
                                .await
                            }
                            _ => text,
                        };
                        if text == sql {
                            return None;
                        }
                        (text, params)
                    }
                };
                let mut b = name.to_vec();
                b.push(0);
                b.extend_from_slice(text.as_bytes());
                b.push(0);
                b.extend_from_slice(tail);
                Some(message(b'P', &b))
            }
            b'E' => {
                let (portal, _) = cstr(body)?;
                let Prepared {
                    kind,
                    chains,
                    user_code,
                    verb,
                } = self.portals.get(portal).copied().unwrap_or_default();
                let r = match self.transaction_failed() {
                    Some(r) => r,
                    None => {
                        let explicit = self.tx.explicit;
                        // OCC has nothing to do for a read or write in autocommit: no lock.
                        let hook = if !explicit && matches!(kind, Kind::Other | Kind::Dml) {
                            Ok(None)
                        } else {
                            occ::on_execute(&mut lock(&self.refusals).occ, verb, kind, explicit)
                        };
                        match hook {
                            Err(r) => r,
                            Ok(instead) => {
                                let now = self.clock.instant();
                                let applied = self.tx.apply(kind, now);
                                if chains && applied.is_ok() {
                                    self.tx.apply(Kind::Begin, now).ok();
                                }
                                if instead.is_some() && applied.is_ok() {
                                    return instead;
                                }
                                // A transaction begins here: `BEGIN`, or the end of one
                                // `AND CHAIN`.
                                let begins = kind == Kind::Begin && !explicit || chains;
                                match applied {
                                    Ok(()) => {
                                        let checks = kind == Kind::Dml || user_code;
                                        return self
                                            .check_after_execute(tag, body, kind, checks, begins);
                                    }
                                    Err(r) => r,
                                }
                            }
                        }
                    }
                };
                let stand_in = lock(&self.refusals).stand_in(r);
                let mut b = REFUSAL_STATEMENT.as_bytes().to_vec();
                b.push(0);
                b.extend_from_slice(stand_in.as_bytes());
                b.extend_from_slice(&[0, 0, 0]);
                Some(message(b'P', &b))
            }
            _ => None,
        }
    }
}

/// Relays the client's messages to PostgreSQL through `side` until the client closes or
/// breaks the protocol.
pub(crate) async fn relay_from_client<C, U>(
    client: C,
    upstream: &mut U,
    side: &mut ClientSide,
) -> std::io::Result<()>
where
    C: AsyncRead + Unpin,
    U: AsyncWrite + Unpin,
{
    let mut client = BufReader::with_capacity(32 * 1024, client);
    let mut out = tokio::io::BufWriter::with_capacity(32 * 1024, upstream);
    let mut body = Vec::new();
    loop {
        let tag = match client.read_u8().await {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => return Err(e),
        };
        let len = client.read_u32().await? as usize;
        if !(4..=MAX_CLIENT_MESSAGE + 4).contains(&len) {
            tracing::debug!("client message of {len} bytes: connection closed");
            break;
        }
        body.clear();
        body.resize(len - 4, 0);
        client.read_exact(&mut body).await?;
        match side.rewrite(tag, &body).await {
            Some(m) => out.write_all(&m).await?,
            None => {
                out.write_all(&[tag]).await?;
                out.write_all(&(len as u32).to_be_bytes()).await?;
                out.write_all(&body).await?;
            }
        }
        if body.capacity() > 64 * 1024 {
            body = Vec::new(); // a large message's buffer is not kept
        }
        if client.buffer().is_empty() {
            out.flush().await?;
        }
    }
    out.flush().await
}

/// Rewrites PostgreSQL's errors for refused statements into DSQL's, in the stream of
/// messages to the client; everything else passes untouched.
pub(crate) struct ResponseFilter {
    refusals: Arc<Mutex<Refusals>>,
    header: [u8; 5],
    header_len: usize,
    body_left: usize,
    /// A message being collected to be checked (tag and length included).
    held: Option<Vec<u8>>,
    /// Answers held back while a check of the relay's may come next: a command tag (the
    /// checked statement's, dropped if the check fails) and the CloseComplete,
    /// ParseComplete and BindComplete messages of an extended-protocol check.
    withheld: Vec<u8>,
    /// `withheld` starts with a command tag.
    withheld_tag: bool,
    /// How many bodiless messages end `withheld`.
    withheld_small: usize,
    /// ReadyForQuery messages seen (the flights answered).
    flights: u64,
    /// Inside an explicit transaction, as the answers so far say.
    explicit: bool,
    /// The statement whose result is coming is an async job's: its tag is DSQL's.
    job: Option<JobKind>,
    /// The statement whose result is coming is an `AWS IAM` one: its rows are dropped and
    /// its tag is DSQL's.
    iam: Option<IamOp>,
    occ: OccFilter,
    /// The buffer of the last message passed on, for the next one to be held.
    spare: Vec<u8>,
}

/// Whether a message of type `tag` from PostgreSQL is one that may answer the relay's
/// extended-protocol check: CloseComplete, ParseComplete, BindComplete (all bodiless).
fn is_small(tag: u8) -> bool {
    matches!(tag, b'1' | b'2' | b'3')
}

impl ResponseFilter {
    /// A filter for the connection whose markers `refusals` holds.
    pub(crate) fn new(refusals: Arc<Mutex<Refusals>>) -> Self {
        Self {
            refusals,
            header: [0; 5],
            header_len: 0,
            body_left: 0,
            held: None,
            withheld: Vec::new(),
            withheld_tag: false,
            withheld_small: 0,
            flights: 0,
            explicit: false,
            job: None,
            iam: None,
            occ: OccFilter::default(),
            spare: Vec::new(),
        }
    }

    /// Feeds bytes from PostgreSQL; what the client is to get is appended to `out`.
    pub(crate) fn feed(&mut self, mut input: &[u8], out: &mut Vec<u8>) {
        while !input.is_empty() {
            if self.body_left > 0 {
                let take = self.body_left.min(input.len());
                match &mut self.held {
                    Some(h) => h.extend_from_slice(&input[..take]),
                    None if self.iam.is_some() || self.occ.skipping() => {}
                    None => out.extend_from_slice(&input[..take]),
                }
                self.body_left -= take;
                input = &input[take..];
                if self.body_left == 0
                    && let Some(h) = self.held.take()
                {
                    self.emit(h, out);
                }
                continue;
            }
            let take = (5 - self.header_len).min(input.len());
            self.header[self.header_len..self.header_len + take].copy_from_slice(&input[..take]);
            self.header_len += take;
            input = &input[take..];
            if self.header_len < 5 {
                continue;
            }
            self.header_len = 0;
            let len = u32::from_be_bytes([
                self.header[1],
                self.header[2],
                self.header[3],
                self.header[4],
            ]) as usize;
            self.body_left = len.saturating_sub(4);
            let tag = self.header[0];
            let checked = matches!(tag, b'E' | b'C' | b'Z' | b'T') || is_small(tag);
            if checked && self.body_left <= MAX_HELD_ERROR {
                let mut h = std::mem::take(&mut self.spare);
                h.clear();
                h.reserve(len + 1);
                h.extend_from_slice(&self.header);
                if self.body_left == 0 {
                    self.emit(h, out);
                } else {
                    self.held = Some(h);
                }
            } else if self.iam.is_none() && !self.occ.skipping() {
                self.release(out);
                out.extend_from_slice(&self.header);
            }
        }
    }

    /// Passes on what was withheld.
    fn release(&mut self, out: &mut Vec<u8>) {
        if !self.withheld.is_empty() {
            out.append(&mut self.withheld);
        }
        self.withheld_tag = false;
        self.withheld_small = 0;
    }

    /// The answer of one of the relay's checks arrived (`failed`: its row-limit error):
    /// the check's own CloseCompletes, ParseComplete and BindComplete are dropped, and on
    /// failure the checked statement's command tag too.
    fn take_check(&mut self, shared: &mut Refusals, failed: bool, out: &mut Vec<u8>) {
        let ours = self.withheld_small.min(super::rows::EXTENDED_ANSWERS);
        self.withheld.truncate(self.withheld.len() - 5 * ours);
        if failed && self.withheld_tag && self.withheld_small == ours {
            self.withheld.clear();
        }
        self.release(out);
        shared.checks.pop_front();
    }

    fn emit(&mut self, mut msg: Vec<u8>, out: &mut Vec<u8>) {
        // One look at the shared state per message (three of them answer every query).
        let refusals = Arc::clone(&self.refusals);
        let mut shared = lock(&refusals);
        if msg[0] == b'Z' {
            self.flights += 1;
            let flights = self.flights;
            while shared.checks.front().is_some_and(|&f| f <= flights) {
                shared.checks.pop_front();
            }
        }
        let answer = {
            let body = &msg[5..];
            let code = (msg[0] == b'E').then(|| occ::error_code(body)).flatten();
            self.occ.answer(
                &mut shared.occ,
                self.explicit,
                msg[0],
                body,
                code,
                error_response,
            )
        };
        match answer {
            occ::Answer::Pass => {}
            occ::Answer::Drop => return,
            occ::Answer::Replace(m) => msg = m,
        }
        let body = &msg[5..];
        match msg[0] {
            tag if is_small(tag) && (!self.withheld.is_empty() || !shared.checks.is_empty()) => {
                self.withheld.extend_from_slice(&msg);
                self.withheld_small += 1;
                return;
            }
            // Every `DO` is the relay's (DSQL's dialect refuses the client's): a row check,
            // a baseline or a size check that passed.
            b'C' if body == b"DO\0" => {
                self.take_check(&mut shared, false, out);
                return;
            }
            // So is every `SAVEPOINT` (refused to clients): OCC's, after an extended-protocol
            // `BEGIN` ([`ClientSide::check_after_execute`]).
            b'C' if body == b"SAVEPOINT\0" => {
                occ::savepoint_made(&mut shared.occ);
                self.take_check(&mut shared, false, out);
                return;
            }
            b'Z' => {
                self.iam = None;
                let status = body.first().copied().unwrap_or(b'I');
                self.explicit = status != b'I';
                shared.failed = status == b'E';
            }
            b'C' | b'E' if self.iam.is_some() => {
                let op = self.iam.take().expect("is some");
                if msg[0] == b'C' {
                    let mut b = op.tag().as_bytes().to_vec();
                    b.push(0);
                    self.release(out);
                    out.extend_from_slice(&message(b'C', &b));
                    return;
                }
            }
            b'T' => {
                if let Some(op) = Self::iam_row(&shared, body) {
                    self.iam = Some(op);
                    return;
                }
                if let Some(renamed) = self.job_row(&shared, body) {
                    self.release(out);
                    out.extend_from_slice(&renamed);
                    return;
                }
            }
            b'C' if self.job.is_some() => {
                let tag = self.job.take().map_or("", JobKind::tag);
                let mut b = tag.as_bytes().to_vec();
                b.push(0);
                self.release(out);
                out.extend_from_slice(&message(b'C', &b));
                return;
            }
            b'C' => {
                match cstr(body).map(|(tag, _)| tag) {
                    Some(b"BEGIN") => self.explicit = true,
                    Some(b"COMMIT" | b"ROLLBACK") => self.explicit = false,
                    _ => {}
                }
                self.release(out);
                if !shared.checks.is_empty() {
                    // A check of this statement's rows may come next.
                    self.withheld = msg;
                    self.withheld_tag = true;
                    return;
                }
            }
            b'E' => {
                if self.explicit {
                    // Before the client sees it: its next statement may be sent before
                    // this flight's ReadyForQuery arrives.
                    shared.failed = true;
                }
                if let Some((new, ours)) = Self::rewrite_error(&mut shared, body) {
                    if ours {
                        self.take_check(&mut shared, true, out);
                    } else {
                        self.release(out);
                    }
                    out.extend_from_slice(&new);
                    return;
                }
            }
            _ => {}
        }
        self.release(out);
        out.extend_from_slice(&msg);
        if msg.capacity() <= MAX_HELD_ERROR {
            self.spare = msg;
        }
    }

    /// The `AWS IAM` statement whose call's RowDescription (one column, named by its
    /// marker) `body` is.
    fn iam_row(shared: &Refusals, body: &[u8]) -> Option<IamOp> {
        let (count, fields) = body.split_first_chunk::<2>()?;
        if *count != 1u16.to_be_bytes() {
            return None;
        }
        let (name, _) = cstr(fields)?;
        shared.iam_of_marker(name)
    }

    /// An async job's RowDescription (one column, named by its marker) with the column
    /// renamed `job_id`; the statement's tag is then DSQL's.
    fn job_row(&mut self, shared: &Refusals, body: &[u8]) -> Option<Vec<u8>> {
        let (count, fields) = body.split_first_chunk::<2>()?;
        if *count != 1u16.to_be_bytes() {
            return None;
        }
        let (name, rest) = cstr(fields)?;
        let kind = shared.job_of_marker(name)?;
        self.job = Some(kind);
        let mut b = count.to_vec();
        b.extend_from_slice(b"job_id\0");
        b.extend_from_slice(rest);
        Some(message(b'T', &b))
    }

    /// DSQL's error for an error of PostgreSQL's that stands for one, and whether it is a
    /// row check's.
    fn rewrite_error(shared: &mut Refusals, body: &[u8]) -> Option<(Vec<u8>, bool)> {
        let mut fields = body;
        let mut code = None;
        let mut text = None;
        let mut detail = None;
        while let Some((&field, rest)) = fields.split_first() {
            if field == 0 {
                break;
            }
            let (value, rest) = cstr(rest)?;
            match field {
                b'C' => code = Some(value),
                b'M' => text = Some(value),
                b'D' => detail = Some(value),
                _ => {}
            }
            fields = rest;
        }
        if code == Some(b"54000") && text == Some(super::size::SIZE_MESSAGE.as_bytes()) {
            // The size check's error, without PL/pgSQL's CONTEXT.
            let r = Refusal {
                code: "54000",
                message: super::size::SIZE_MESSAGE.to_owned(),
                detail: detail.and_then(|d| String::from_utf8(d.to_vec()).ok()),
            };
            return Some((error_response(&r), false));
        }
        if code == Some(b"54000") && text == Some(super::rows::ROW_MESSAGE.as_bytes()) {
            let r = Refusal::new("54000", super::rows::ROW_MESSAGE);
            return Some((error_response(&r), true));
        }
        if code? != b"42703" {
            return None;
        }
        let refusal = shared.take(std::str::from_utf8(text?).ok()?)?;
        Some((error_response(&refusal), false))
    }
}

/// An ERROR-level ErrorResponse carrying `r`.
pub(crate) fn error_response(r: &Refusal) -> Vec<u8> {
    let mut body = Vec::new();
    let mut field = |t: u8, v: &str| {
        body.push(t);
        body.extend(v.bytes().filter(|&b| b != 0));
        body.push(0);
    };
    field(b'S', "ERROR");
    field(b'V', "ERROR");
    field(b'C', r.code);
    field(b'M', &r.message);
    if let Some(d) = &r.detail {
        field(b'D', d);
    }
    body.push(0);
    message(b'E', &body)
}
