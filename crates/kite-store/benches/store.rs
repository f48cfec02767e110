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

/// CPU seconds this process has used so far (the kernel's own per-process clock).
fn cpu_secs() -> f64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_PROCESS_CPUTIME_ID)
        .map(|t| t.tv_sec() as f64 + t.tv_nsec() as f64 / 1e9)
        .unwrap_or(0.0)
}
