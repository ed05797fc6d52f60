//! The message stores' writer, shared by SQLite and MySQL: one task takes batches from a bounded
//! queue and writes everything queued — up to 1024 commands — in one transaction, in the order
//! they were queued, so under load thousands of rows go in per commit and a room's batches are
//! never reordered. What a transaction is belongs to the store ([`Transactions`]).
//!
//! A failed transaction is retried with exponential backoff until it succeeds, never dropped
//! while the process lives: meanwhile the queue fills and `append` waits (back-pressure up to
//! ingest), failures are counted and the store reports its error (`/readyz` fails). Only a
//! closing store gives up, after a few more attempts, and then does not record a clean shutdown,
//! so the next start gives rooms new epochs instead of handing out the lost batches' seqs again.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use roomcast_core::BoxFut;
use roomcast_core::metrics::Metrics;
use roomcast_core::model::RoomBatch;
use roomcast_core::ports::StoreError;
use tokio::sync::{mpsc, oneshot};

/// How a store writes (see the module docs).
pub(crate) trait Transactions: Send + 'static {
    /// The store's name in logs (`SQLite`, `MySQL`).
    fn name(&self) -> &'static str;
    /// Writes the batches, in order, in one transaction.
    fn write(&mut self, batches: Vec<Arc<RoomBatch>>) -> BoxFut<'_, Result<(), String>>;
    /// Records that this run shut down cleanly: everything appended was written.
    fn record_clean(&mut self) -> BoxFut<'_, ()>;
    /// Background work between writes, one bounded step per call (SQLite's pruning); whether
    /// another step is due at once. Called after every turn, so it decides itself when work is
    /// due; while it is, the writer does not wait for commands between steps.
    fn chore(&mut self) -> BoxFut<'_, bool> {
        Box::pin(std::future::ready(false))
    }
}

#[derive(Clone)]
pub(crate) struct RetryOptions {
    /// Batches that may wait for the writer before `append` waits.
    pub queue: usize,
    /// Pause after the first failed write, doubled after each further failure up to `max`.
    pub base: Duration,
    pub max: Duration,
    /// Where write failures are counted.
    pub metrics: Arc<Metrics>,
}

/// Commands a turn of the writer handles at most.
const TURN: usize = 1024;

/// Failed attempts a closing store still makes before it gives up on a write.
const RETRIES_WHEN_CLOSING: u32 = 3;

enum Cmd {
    Append(Arc<RoomBatch>),
    Flush(oneshot::Sender<()>),
    Close(oneshot::Sender<()>),
}

/// What the writer tells the rest of the store.
#[derive(Default)]
struct Health {
    /// The last write error while writes fail; `None` once a write succeeds.
    error: Mutex<Option<String>>,
    /// Set by `close`: a write that keeps failing is given up after a few more attempts.
    closing: AtomicBool,
}

/// The store's handle on its writer task.
pub(crate) struct Writer {
    tx: mpsc::Sender<Cmd>,
    health: Arc<Health>,
    closed: AtomicBool,
}

impl Writer {
    /// Starts the writer task (needs a tokio runtime).
    pub(crate) fn start(transactions: impl Transactions, opts: RetryOptions) -> Writer {
        let (tx, rx) = mpsc::channel(opts.queue.max(1));
        let health = Arc::new(Health::default());
        tokio::spawn(
            Task {
                transactions,
                opts,
                health: health.clone(),
                lost_writes: false,
            }
            .run(rx),
        );
        Writer {
            tx,
            health,
            closed: AtomicBool::new(false),
        }
    }

    /// Queues a batch (waits while the queue is full).
    pub(crate) async fn append(&self, batch: Arc<RoomBatch>) -> Result<(), StoreError> {
        if self.closed.load(Ordering::Relaxed) {
            return Err(StoreError::Closed);
        }
        self.tx
            .send(Cmd::Append(batch))
            .await
            .map_err(|_| StoreError::Closed)
    }

    /// Waits until everything queued so far is written.
    pub(crate) async fn flush(&self) -> Result<(), StoreError> {
        self.command(Cmd::Flush).await
    }

    /// Writes what is queued, records a clean shutdown if nothing was lost, and stops.
    pub(crate) async fn close(&self) -> Result<(), StoreError> {
        if self.closed.swap(true, Ordering::Relaxed) {
            return Ok(());
        }
        self.health.closing.store(true, Ordering::Relaxed);
        self.command(Cmd::Close).await
    }

    /// Why writes fail right now, if they do.
    pub(crate) fn error(&self) -> Option<String> {
        self.health.error.lock().clone()
    }

    async fn command(
        &self,
        make: impl FnOnce(oneshot::Sender<()>) -> Cmd,
    ) -> Result<(), StoreError> {
        let (done, wait) = oneshot::channel();
        self.tx
            .send(make(done))
            .await
            .map_err(|_| StoreError::Closed)?;
        wait.await.map_err(|_| StoreError::Closed)
    }
}

struct Task<T> {
    transactions: T,
    opts: RetryOptions,
    health: Arc<Health>,
    /// Once a batch could not be written (given up at shutdown), this run must not be recorded
    /// as clean.
    lost_writes: bool,
}

impl<T: Transactions> Task<T> {
    async fn run(mut self, mut rx: mpsc::Receiver<Cmd>) {
        // The chore's first step comes before the first write (SQLite prunes a backlog from a
        // long stop, not what this run is about to write).
        let mut chore_due = self.transactions.chore().await;
        let mut cmds = Vec::with_capacity(TURN);
        loop {
            if chore_due {
                match rx.try_recv() {
                    Ok(c) => cmds.push(c),
                    Err(mpsc::error::TryRecvError::Empty) => {}
                    Err(mpsc::error::TryRecvError::Disconnected) => return,
                }
            } else {
                let Some(first) = rx.recv().await else {
                    return;
                };
                cmds.push(first);
            }
            while cmds.len() < TURN {
                match rx.try_recv() {
                    Ok(c) => cmds.push(c),
                    Err(_) => break,
                }
            }
            let batches: Vec<Arc<RoomBatch>> = cmds
                .iter()
                .filter_map(|c| match c {
                    Cmd::Append(b) => Some(b.clone()),
                    _ => None,
                })
                .collect();
            if !batches.is_empty() {
                self.write_with_retry(batches).await;
            }
            chore_due = self.transactions.chore().await;
            let mut stop = false;
            for c in cmds.drain(..) {
                match c {
                    Cmd::Append(_) => {}
                    Cmd::Flush(done) => {
                        let _ = done.send(());
                    }
                    Cmd::Close(done) => {
                        if self.lost_writes {
                            tracing::warn!(
                                "messages were lost this run; not recording a clean shutdown"
                            );
                        } else {
                            self.transactions.record_clean().await;
                        }
                        let _ = done.send(());
                        stop = true;
                    }
                }
            }
            if stop {
                return;
            }
        }
    }

    async fn write_with_retry(&mut self, batches: Vec<Arc<RoomBatch>>) {
        let mut pause = self.opts.base;
        let mut attempts = 0u32;
        loop {
            match self.transactions.write(batches.clone()).await {
                Ok(()) => {
                    if self.health.error.lock().take().is_some() {
                        self.opts.metrics.store_write_failing.set(0);
                        tracing::info!("message store writes again");
                    }
                    return;
                }
                Err(e) => {
                    attempts += 1;
                    self.opts.metrics.store_write_failures.inc();
                    self.opts.metrics.store_write_failing.set(1);
                    *self.health.error.lock() = Some(format!("cannot write messages: {e}"));
                    let store = self.transactions.name();
                    if self.health.closing.load(Ordering::Relaxed)
                        && attempts >= RETRIES_WHEN_CLOSING
                    {
                        tracing::error!(error = %e, store, batches = batches.len(), "cannot write messages at shutdown; giving up");
                        self.lost_writes = true;
                        return;
                    }
                    tracing::error!(error = %e, store, batches = batches.len(), attempt = attempts, retry_in_ms = pause.as_millis() as u64, "cannot write messages; retrying");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(self.opts.max.max(self.opts.base));
                }
            }
        }
    }
}
