//! The `kite` binary: parses the command line and wires the component crates together. It
//! holds no logic of its own beyond start-up order.

mod config;
mod host;
mod server;

/// What `kite --version` prints after the name.
pub const VERSION_LINE: &str =
    concat!("v", env!("CARGO_PKG_VERSION"), "+kite (kubernetes v1.36.0)");

#[cfg(test)]
#[test]
fn version_line_names_the_served_kubernetes_version() {
    assert!(VERSION_LINE.contains(kite_api::KUBERNETES_VERSION));
}

/// mimalloc instead of glibc's malloc: about a third less CPU per request and per scheduled
/// pod in the benchmarks (docs/benchmarks.md), for about 1 MiB more idle RSS.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let cli = match config::parse() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
    };
    let result = match cli.command {
        config::Command::Server(args) => args.resolve().and_then(server::run),
        config::Command::Sim(args) => args.resolve().and_then(|(kc, o)| server::run_sim(&kc, o)),
        config::Command::Scheduler(args) => server::run_scheduler(&args.kubeconfig()),
        config::Command::Images(args) => server::run_images(&args),
        config::Command::CheckConfig(args) => {
            let findings = kite_hostcheck::check(&args.options());
            print!("{}", kite_hostcheck::render(&findings));
            let failed = findings
                .iter()
                .any(|f| f.level == kite_hostcheck::Level::Fail);
            std::process::exit(i32::from(failed));
        }
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
