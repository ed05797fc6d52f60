//! One SQLite connection shared by a low-volume store (acks, outbox): opened on the same file
//! as the message store, each call one short statement on the blocking pool. These stores
//! promise "durable when answered", so their connection commits with `synchronous=FULL`.

use std::path::Path;
use std::sync::Arc;

use parking_lot::Mutex;
use roomcast_core::BoxFut;
use roomcast_core::ports::StoreError;
use rusqlite::Connection;

use crate::sqlite::{Durability, open_connection, unavailable};

pub(crate) struct SharedConn(Arc<Mutex<Connection>>);

impl SharedConn {
    /// Opens (creating the directory and file if needed) and applies `schema`.
    pub(crate) fn open(path: &Path, schema: &str) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir).map_err(unavailable)?;
        }
        let conn = open_connection(path, Durability::Full).map_err(unavailable)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn commits_are_synchronous_full() {
        let dir = tempfile::tempdir().unwrap();
        let conn = SharedConn::open(&dir.path().join("x.db"), "").unwrap();
        // 2 = FULL (0 OFF, 1 NORMAL, 3 EXTRA).
        let level: i64 = conn
            .run(|c| c.query_row("PRAGMA synchronous", [], |r| r.get(0)))
            .await
            .unwrap();
        assert_eq!(level, 2);
    }
}
