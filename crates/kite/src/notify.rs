//! systemd's readiness protocol (sd_notify): one datagram to `$NOTIFY_SOCKET` saying
//! `READY=1`, for a unit of `Type=notify`. Without the variable (no systemd) it does
//! nothing.

use std::ffi::OsString;
use std::os::unix::net::UnixDatagram;
use std::sync::OnceLock;

static SOCKET: OnceLock<Option<OsString>> = OnceLock::new();

/// Takes `$NOTIFY_SOCKET` out of the environment, for [`ready`] alone: the programs kite
/// starts must not inherit it (containerd says READY=1 itself as soon as it is up, which
/// is not kite being ready). Call first thing in `main`, while there is one thread.
pub fn take_socket() {
    let path = std::env::var_os("NOTIFY_SOCKET");
    if path.is_some() {
        std::env::remove_var("NOTIFY_SOCKET");
    }
    let _ = SOCKET.set(path);
}

/// Tells the service manager that kite is ready, if one asked.
pub fn ready() -> std::io::Result<()> {
    send(b"READY=1\nSTATUS=kite is ready\n")
}

fn send(msg: &[u8]) -> std::io::Result<()> {
    let Some(path) = SOCKET.get().cloned().flatten() else {
        return Ok(());
    };
    let sock = UnixDatagram::unbound()?;
    let bytes = std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str());
    // A leading '@' names a socket in the abstract namespace.
    if let Some(name) = bytes.strip_prefix(b"@") {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
        sock.send_to_addr(msg, &addr)?;
    } else {
        sock.send_to(msg, &path)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn ready_reaches_the_notify_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let listener = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        // The only test in this binary that sets the variable.
        std::env::set_var("NOTIFY_SOCKET", &path);
        super::take_socket();
        assert!(
            std::env::var_os("NOTIFY_SOCKET").is_none(),
            "children do not inherit it"
        );
        super::ready().unwrap();
        let mut buf = [0u8; 128];
        let n = listener.recv(&mut buf).unwrap();
        assert!(std::str::from_utf8(&buf[..n])
            .unwrap()
            .starts_with("READY=1\n"));
    }
}
