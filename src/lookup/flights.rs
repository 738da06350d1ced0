//! Single flight: at most one store query per key id in flight in this process; whoever asks
//! for the same id meanwhile waits for that query's answer instead of sending another.
//!
//! The map is bounded by the queries running, not by what clients send: an id's entry leaves
//! with its query's end (or its last request's), and a query refused by admission ends in the
//! same poll that began it. So it holds at most `max_inflight` ids, plus one per worker thread
//! for the instant a refused query takes.

use crate::key::KeyId;
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::OnceCell;

type Flight<T> = Arc<OnceCell<T>>;

/// The query in flight for each key id, shared by everyone who asks meanwhile.
pub struct Flights<T> {
    flights: Mutex<HashMap<KeyId, Flight<T>>>,
}

impl<T> Default for Flights<T> {
    fn default() -> Self {
        Flights { flights: Mutex::new(HashMap::new()) }
    }
}

impl<T: Clone> Flights<T> {
    /// The answer of the query in flight for `id`, or of `query`, run now, if none is.
    pub async fn join<F: Future<Output = T>>(&self, id: KeyId, query: impl FnOnce() -> F) -> T {
        let flight = Arc::clone(self.lock().entry(id).or_default());
        // Leaves the map whether the query finishes or this request is dropped mid-way (then
        // a waiter, if any, runs the query itself: nobody waits on a query that never ends).
        let _leave = Leave { flights: self, id, flight: &flight };
        flight.get_or_init(query).await.clone()
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<KeyId, Flight<T>>> {
        self.flights.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Takes a flight out of the map when a request that joined it is done with it, unless others
/// still wait on it (they run it, or read its answer, themselves).
struct Leave<'a, T: Clone> {
    flights: &'a Flights<T>,
    id: KeyId,
    flight: &'a Flight<T>,
}

impl<T: Clone> Drop for Leave<'_, T> {
    fn drop(&mut self) {
        let mut flights = self.flights.lock();
        let ours = flights.get(&self.id).is_some_and(|f| Arc::ptr_eq(f, self.flight));
        // Under the map's lock no one can join meanwhile: two references are the map's and ours.
        if ours && (self.flight.initialized() || Arc::strong_count(self.flight) <= 2) {
            flights.remove(&self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::pending;

    fn id(n: u8) -> KeyId {
        KeyId::from_hex(&format!("{n:02x}").repeat(32)).unwrap()
    }

    impl<T: Clone> Flights<T> {
        fn len(&self) -> usize {
            self.lock().len()
        }
    }

    /// Requests that end before their queries (clients gone, a timeout) leave no entry behind,
    /// however many joined; answered or refused queries leave none either.
    #[tokio::test]
    async fn the_map_holds_an_id_only_while_its_query_runs() {
        let flights = Arc::new(Flights::<u32>::default());
        let mut waiting = Vec::new();
        for n in 0..100u8 {
            for _ in 0..3 {
                let flights = Arc::clone(&flights);
                waiting.push(tokio::spawn(async move { flights.join(id(n), pending::<u32>).await }));
            }
        }
        while flights.len() < 100 {
            tokio::task::yield_now().await;
        }
        assert_eq!(flights.len(), 100, "one entry per id, not per request");
        waiting.iter().for_each(|w| w.abort());
        for w in waiting {
            let _ = w.await;
        }
        assert_eq!(flights.len(), 0, "abandoned queries stayed in the map");
        for n in 0..100u8 {
            assert_eq!(flights.join(id(n), || async { u32::from(n) }).await, u32::from(n));
        }
        assert_eq!(flights.len(), 0, "answered queries stayed in the map");
    }
}
