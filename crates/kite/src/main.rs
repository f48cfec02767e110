//! The `kite` binary: parses the command line and wires the component crates together. It
//! holds no logic of its own beyond start-up order.

mod agent;
mod alloc;
mod config;
mod host;
mod node;
mod notify;
mod server;
mod token;
mod tools;

/// What `kite --version` prints after the name.
pub const VERSION_LINE: &str =
    concat!("v", env!("CARGO_PKG_VERSION"), "+kite (kubernetes v1.36.0)");

#[cfg(test)]
#[test]
fn version_line_names_the_served_kubernetes_version() {
    assert!(VERSION_LINE.contains(kite_api::KUBERNETES_VERSION));
}

/// mimalloc instead of glibc's malloc: about a third less CPU per request and per scheduled
/// pod in the benchmarks (docs/benchmarks.md), for about 1 MiB more idle RSS; its large
/// blocks staggered within their pages ([`alloc`]), which copies between them need.
#[global_allocator]
static ALLOC: alloc::Coloured = alloc::Coloured::new();

fn main() {
    notify::take_socket();
    // Installed as `kubectl` (a link install.sh makes where no kubectl exists): act as
    // `kite kubectl`.
    let argv0 = std::env::args_os().next().unwrap_or_default();
    if std::path::Path::new(&argv0).file_name() == Some("kubectl".as_ref()) {
        let args: Vec<_> = std::env::args_os().skip(1).collect();
        exit_on_error(tools::kubectl(&args));
    }
    let cli = match config::parse() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
    };
    let result = match cli.command {
        config::Command::Server(args) => args.resolve().and_then(server::run),
        config::Command::Agent(args) => args.resolve().and_then(agent::run),
        config::Command::Token(args) => token::run(&args),
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
        config::Command::Kubectl(a) => tools::kubectl(&a.args),
        config::Command::Ctr(a) => tools::ctr(&a.args),
        config::Command::Ps(a) => tools::ps(&a.containerd.socket(), a.all),
        config::Command::Packaging { file } => tools::packaging(&file),
    };
    exit_on_error(result);
}

fn exit_on_error(result: anyhow::Result<()>) {
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
