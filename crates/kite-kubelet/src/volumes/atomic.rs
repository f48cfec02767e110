//! Writing a volume's files all at once, as upstream's `AtomicWriter`: the files go into a
//! fresh timestamped directory (`..2026_12_05_19_50_00.123456789`), a `..data` symlink is
//! switched to it with one rename, and each top-level name is a symlink through `..data`.
//! A process reading the volume sees the old set or the new one, never a mix; a subPath
//! mount, which binds one file or directory, keeps what it had.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

/// One file: its bytes and mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct File {
    pub data: Vec<u8>,
    pub mode: u32,
}

/// Relative path → file.
pub type Payload = BTreeMap<String, File>;

const DATA: &str = "..data";

/// Upstream's `validatePath`: relative, no `..` element, not starting with `..`.
pub fn validate(path: &str) -> Result<(), String> {
    if path.is_empty() {
        return Err("invalid path: must not be empty".into());
    }
    if Path::new(path).is_absolute() {
        return Err(format!("invalid path: must be relative path: {path}"));
    }
    if path.len() > 4096 {
        return Err(format!(
            "invalid path: must be less than or equal to 4096 characters: {path}"
        ));
    }
    if Path::new(path)
        .components()
        .any(|c| matches!(c, Component::ParentDir))
    {
        return Err(format!("invalid path: must not contain '..': {path}"));
    }
    if path.starts_with("..") {
        return Err(format!("invalid path: must not start with '..': {path}"));
    }
    Ok(())
}

/// What is in the directory `..data` points to now, if anything.
fn current(dir: &Path) -> Option<(PathBuf, Payload)> {
    let target = std::fs::read_link(dir.join(DATA)).ok()?;
    let ts = dir.join(&target);
    let mut out = Payload::new();
    fn walk(root: &Path, d: &Path, out: &mut Payload) -> std::io::Result<()> {
        for e in std::fs::read_dir(d)? {
            let e = e?;
            let p = e.path();
            let meta = std::fs::symlink_metadata(&p)?;
            if meta.is_dir() {
                walk(root, &p, out)?;
            } else {
                let rel = p
                    .strip_prefix(root)
                    .unwrap_or(&p)
                    .to_string_lossy()
                    .into_owned();
                out.insert(
                    rel,
                    File {
                        data: std::fs::read(&p)?,
                        mode: meta.permissions().mode() & 0o7777,
                    },
                );
            }
        }
        Ok(())
    }
    walk(&ts, &ts, &mut out).ok()?;
    Some((ts, out))
}

/// Writes `payload` into `dir` (made if missing); nothing happens when it is what is
/// there. `gid`: the group the files get (a pod's fsGroup). True when something changed.
pub fn write(dir: &Path, payload: &Payload, gid: Option<u32>) -> std::io::Result<bool> {
    for p in payload.keys() {
        validate(p).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    }
    std::fs::create_dir_all(dir)?;
    let old = current(dir);
    if old.as_ref().is_some_and(|(_, have)| have == payload) {
        return Ok(false);
    }
    // The new generation.
    let stamp = jiff::Timestamp::now()
        .strftime("..%Y_%m_%d_%H_%M_%S.%f")
        .to_string();
    let ts = dir.join(&stamp);
    std::fs::create_dir(&ts)?;
    std::fs::set_permissions(&ts, std::fs::Permissions::from_mode(0o755))?;
    let chown = |p: &Path| -> std::io::Result<()> {
        if let Some(g) = gid {
            nix::unistd::chown(p, None, Some(nix::unistd::Gid::from_raw(g)))
                .map_err(std::io::Error::from)?;
        }
        Ok(())
    };
    chown(&ts)?;
    for (rel, f) in payload {
        let path = ts.join(rel);
        if let Some(parent) = path.parent() {
            if !parent.exists() {
                std::fs::create_dir_all(parent)?;
                let mut d = parent.to_path_buf();
                while d != ts {
                    std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755))?;
                    chown(&d)?;
                    if !d.pop() {
                        break;
                    }
                }
            }
        }
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(f.mode)
            .open(&path)?;
        out.write_all(&f.data)?;
        out.sync_all()?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(f.mode))?;
        chown(&path)?;
    }
    // Switch `..data` with one rename.
    let tmp = dir.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&stamp, &tmp)?;
    std::fs::rename(&tmp, dir.join(DATA))?;
    // The names users see: each top-level entry, through `..data`.
    let wanted: std::collections::BTreeSet<String> = payload
        .keys()
        .filter_map(|k| k.split('/').next().map(String::from))
        .collect();
    for name in &wanted {
        let link = dir.join(name);
        if std::fs::read_link(&link).ok().as_deref() != Some(Path::new(&format!("{DATA}/{name}"))) {
            let _ = std::fs::remove_file(&link);
            std::os::unix::fs::symlink(format!("{DATA}/{name}"), &link)?;
        }
    }
    // What the old generation had and the new one has not.
    for e in std::fs::read_dir(dir)?.flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        if n.starts_with("..") || wanted.contains(&n) {
            continue;
        }
        if std::fs::symlink_metadata(e.path()).is_ok_and(|m| m.file_type().is_symlink()) {
            let _ = std::fs::remove_file(e.path());
        }
    }
    if let Some((old_ts, _)) = old {
        let _ = std::fs::remove_dir_all(old_ts);
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(s: &str, mode: u32) -> File {
        File {
            data: s.as_bytes().to_vec(),
            mode,
        }
    }

    #[test]
    fn paths_are_checked_as_upstream() {
        assert!(validate("a/b").is_ok());
        assert!(validate("/etc/passwd").is_err());
        assert!(validate("a/../../x").is_err());
        assert!(validate("..data").is_err());
        assert!(validate("").is_err());
    }

    #[test]
    fn generations_switch_whole_and_old_names_go() {
        let d = tempfile::tempdir().unwrap();
        let mut p = Payload::new();
        p.insert("index.html".into(), file("one", 0o644));
        p.insert("conf/app.yaml".into(), file("a: 1", 0o600));
        assert!(write(d.path(), &p, None).unwrap());
        assert_eq!(
            std::fs::read_to_string(d.path().join("index.html")).unwrap(),
            "one"
        );
        assert_eq!(
            std::fs::read_to_string(d.path().join("conf/app.yaml")).unwrap(),
            "a: 1"
        );
        let mode = std::fs::metadata(d.path().join("conf/app.yaml"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(std::fs::symlink_metadata(d.path().join("index.html"))
            .unwrap()
            .file_type()
            .is_symlink());
        let first = std::fs::read_link(d.path().join("..data")).unwrap();

        // The same again: nothing to do.
        assert!(!write(d.path(), &p, None).unwrap());

        // A change: a new generation, the old one and the dropped name gone.
        p.insert("index.html".into(), file("two", 0o644));
        p.remove("conf/app.yaml");
        assert!(write(d.path(), &p, None).unwrap());
        assert_eq!(
            std::fs::read_to_string(d.path().join("index.html")).unwrap(),
            "two"
        );
        assert!(!d.path().join("conf").exists());
        assert!(!d.path().join(&first).exists());
        let entries: Vec<String> = std::fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(entries.len(), 3, "{entries:?}");
    }
}
