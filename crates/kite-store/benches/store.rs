//! Store-only benchmark: durable creates through the `Store` trait with 1, 8 and 64
//! concurrent writers (1 KiB values), without HTTP. `cargo bench -p kite-store --bench store`.
//! Besides the rate it prints the process's CPU time per create, which moves less than the
//! rate when the machine's speed does.

use kite_store::{SledStore, Store};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        for writers in [1usize, 8, 64] {
            let dir = tempfile::tempdir().unwrap();
            let store = Arc::new(SledStore::open(dir.path()).unwrap());
            let total = if writers == 1 { 2000 } else { 20000 };
            let next = Arc::new(AtomicUsize::new(0));
            let (start, cpu) = (Instant::now(), cpu_secs());
            let mut tasks = Vec::new();
            for _ in 0..writers {
                let (store, next) = (store.clone(), next.clone());
                tasks.push(tokio::spawn(async move {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= total {
                            return;
                        }
                        store
                            .create(&format!("/registry/core/pods/ns/p{i}"), vec![b'x'; 1024])
                            .await
                            .unwrap();
                    }
                }));
            }
            for t in tasks {
                t.await.unwrap();
            }
            let rate = total as f64 / start.elapsed().as_secs_f64();
            let cpu_us = (cpu_secs() - cpu) * 1e6 / total as f64;
            println!(
                "store: {writers:>2} writers, {total} durable creates of 1 KiB: {rate:.0}/s, \
                 {cpu_us:.0} µs CPU each"
            );
        }
    });
}

/// User plus system CPU seconds of this process so far, from `/proc/self/stat` (in USER_HZ,
/// which Linux fixes at 100 for `/proc`).
fn cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of the line; `rest` starts at field 3.
    (ticks(11) + ticks(12)) / 100.0
}
