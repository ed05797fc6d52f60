//! A fixed set of mutex-guarded shards, so that unrelated keys never wait for each other.
//!
//! Locks are `parking_lot` mutexes held for short, synchronous sections only — never across an
//! `.await`.

use std::hash::{BuildHasher, Hash};

use parking_lot::Mutex;

pub struct Sharded<T> {
    shards: Box<[Mutex<T>]>,
    hasher: std::hash::RandomState,
}

impl<T: Default> Sharded<T> {
    /// `n` is rounded up to a power of two.
    pub fn new(n: usize) -> Self {
        let n = n.max(1).next_power_of_two();
        Sharded {
            shards: (0..n).map(|_| Mutex::new(T::default())).collect(),
            hasher: std::hash::RandomState::new(),
        }
    }
}

impl<T> Sharded<T> {
    pub fn for_key<K: Hash + ?Sized>(&self, key: &K) -> &Mutex<T> {
        let h = self.hasher.hash_one(key) as usize;
        &self.shards[h & (self.shards.len() - 1)]
    }

    /// The index of the shard holding `key`; shards locked together must be locked in index
    /// order.
    pub fn index_for<K: Hash + ?Sized>(&self, key: &K) -> usize {
        self.hasher.hash_one(key) as usize & (self.shards.len() - 1)
    }

    pub fn at(&self, index: usize) -> &Mutex<T> {
        &self.shards[index]
    }

    pub fn for_index(&self, i: u64) -> &Mutex<T> {
        &self.shards[(i as usize) & (self.shards.len() - 1)]
    }

    pub fn iter(&self) -> impl Iterator<Item = &Mutex<T>> {
        self.shards.iter()
    }
}
