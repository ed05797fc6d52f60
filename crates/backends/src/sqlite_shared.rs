//! One SQLite connection shared by a low-volume store (acks, outbox): opened on the same file
//! as the message store, each call one short statement on the blocking pool.

use std::path::Path;
use std::sync::Arc;

use parking_lot::Mutex;
use roomcast_core::BoxFut;
use roomcast_core::ports::StoreError;
use rusqlite::Connection;

use crate::sqlite::{open_connection, unavailable};

pub(crate) struct SharedConn(Arc<Mutex<Connection>>);

impl SharedConn {
    /// Opens (creating the directory and file if needed) and applies `schema`.
    pub(crate) fn open(path: &Path, schema: &str) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir).map_err(unavailable)?;
        }
        let conn = open_connection(path).map_err(unavailable)?;
        conn.execute_batch(schema).map_err(unavailable)?;
        Ok(SharedConn(Arc::new(Mutex::new(conn))))
    }

    /// Runs `f` on the blocking pool.
    pub(crate) fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> BoxFut<'_, Result<T, StoreError>> {
        let conn = self.0.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || f(&mut conn.lock()))
                .await
                .map_err(unavailable)?
                .map_err(unavailable)
        })
    }
}
