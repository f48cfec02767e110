//! Container logs in the CRI format, as containerd's CRI plugin writes them and every log
//! shipper reads them: one record per line, `<RFC 3339 time> <stdout|stderr> <F|P> <text>`,
//! where `P` marks a piece of a line longer than 16 KiB and `F` its last piece (or a whole
//! line).
//!
//! Writing: a container's stdout and stderr are FIFOs ([`Fifos`]) that the shim writes and
//! kite reads, as containerd's CRI plugin does; a copier task per container turns the output
//! into records and rotates the file by size (`<n>.log` → `<n>.log.<time>`, keeping
//! `max_files` files in all), as the kubelet's container log manager does. The FIFOs live
//! in the data dir, so a restarted kite opens them again ([`Fifos::reattach`]); while kite
//! is down a container's output waits in the pipe (64 KiB, then its writes block, as with
//! a restarting containerd). A logger process per container (containerd's `binary://`
//! stdio) was measured at 9 MiB of private memory each, so the copy stays in kite.
//!
//! Reading: [`Reader`] serves `kubectl logs` (tail, since, timestamps, limit, follow) from
//! the current file, as upstream's kubelet does.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// The longest record's text; longer lines are split into `P` records (containerd's
/// `max_container_log_line_size`).
pub const MAX_RECORD: usize = 16 * 1024;

/// Log rotation settings (`--container-log-max-size`, `--container-log-max-files`).
#[derive(Debug, Clone, Copy)]
pub struct Rotation {
    pub max_size: u64,
    pub max_files: usize,
}

impl Default for Rotation {
    fn default() -> Self {
        // Upstream kubelet's defaults: 10Mi, 5 files.
        Rotation {
            max_size: 10 * 1024 * 1024,
            max_files: 5,
        }
    }
}

/// A CRI log file being written, rotated by size.
pub struct CriFile {
    path: PathBuf,
    file: File,
    size: u64,
    rot: Rotation,
}

impl CriFile {
    pub fn open(path: &Path, rot: Rotation) -> std::io::Result<CriFile> {
        if let Some(d) = path.parent() {
            std::fs::create_dir_all(d)?;
        }
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let size = file.metadata()?.len();
        Ok(CriFile {
            path: path.to_path_buf(),
            file,
            size,
            rot,
        })
    }

    /// Writes one record.
    pub fn record(&mut self, stream: &str, full: bool, text: &[u8]) -> std::io::Result<()> {
        let ts = jiff::Timestamp::now();
        let mut line = Vec::with_capacity(text.len() + 48);
        write!(line, "{ts} {stream} {} ", if full { 'F' } else { 'P' })?;
        line.extend_from_slice(text);
        line.push(b'\n');
        if self.size > 0 && self.size + line.len() as u64 > self.rot.max_size {
            self.rotate()?;
        }
        self.file.write_all(&line)?;
        self.size += line.len() as u64;
        Ok(())
    }

    /// `<n>.log` becomes `<n>.log.<time>`; the oldest such files beyond `max_files - 1` go.
    fn rotate(&mut self) -> std::io::Result<()> {
        let stamp = jiff::Zoned::now().strftime("%Y%m%d-%H%M%S").to_string();
        let mut to = PathBuf::from(format!("{}.{stamp}", self.path.display()));
        let mut n = 1;
        while to.exists() {
            to = PathBuf::from(format!("{}.{stamp}.{n}", self.path.display()));
            n += 1;
        }
        std::fs::rename(&self.path, &to)?;
        self.file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        self.size = 0;
        let mut old = rotated(&self.path);
        let keep = self.rot.max_files.saturating_sub(1);
        if old.len() > keep {
            old.sort();
            for p in &old[..old.len() - keep] {
                let _ = std::fs::remove_file(p);
            }
        }
        Ok(())
    }
}

/// The rotated files of a log (`<path>.<time>`), oldest first.
pub fn rotated(path: &Path) -> Vec<PathBuf> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Vec::new();
    };
    let prefix = format!("{}.", name.to_string_lossy());
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .map(|e| e.path())
        .collect();
    out.sort();
    out
}

/// Splits one stream's output into records: whole lines as `F`, pieces of lines longer
/// than [`MAX_RECORD`] as `P`.
#[derive(Default)]
struct Splitter {
    pending: Vec<u8>,
}

impl Splitter {
    fn feed(&mut self, data: &[u8], stream: &str, to: &Mutex<CriFile>) -> std::io::Result<()> {
        self.pending.extend_from_slice(data);
        let mut f = to.lock().unwrap_or_else(|p| p.into_inner());
        let mut start = 0;
        while let Some(i) = self.pending[start..].iter().position(|b| *b == b'\n') {
            let line = &self.pending[start..start + i];
            if line.is_empty() {
                f.record(stream, true, b"")?;
            }
            for (k, piece) in line.chunks(MAX_RECORD).enumerate() {
                f.record(stream, (k + 1) * MAX_RECORD >= line.len(), piece)?;
            }
            start += i + 1;
        }
        self.pending.drain(..start);
        while self.pending.len() >= MAX_RECORD {
            let piece: Vec<u8> = self.pending.drain(..MAX_RECORD).collect();
            f.record(stream, false, &piece)?;
        }
        Ok(())
    }

    /// The end of the stream: a last line without a newline is whole (containerd's reader
    /// does the same).
    fn finish(&mut self, stream: &str, to: &Mutex<CriFile>) -> std::io::Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let rest = std::mem::take(&mut self.pending);
        to.lock()
            .unwrap_or_else(|p| p.into_inner())
            .record(stream, true, &rest)
    }
}

/// What a running container writes, for `kubectl attach`: each chunk of output as it is
/// copied into the log, with its stream (`stdout`, `stderr`), for whoever listens. A tap
/// ends (its receivers see the channel close) when the container's output does.
pub type Chunk = (&'static str, bytes::Bytes);

static TAPS: std::sync::LazyLock<Mutex<std::collections::HashMap<String, Tap>>> =
    std::sync::LazyLock::new(Default::default);

struct Tap {
    tx: tokio::sync::broadcast::Sender<Chunk>,
    /// How many copiers (stdout, stderr) still feed it.
    feeders: usize,
}

/// The write ends kite holds of containers' stdin FIFOs (`stdin: true` without
/// `stdinOnce`), so that their stdin stays open between attach sessions; dropped when the
/// container's output ends.
static STDIN_KEEPERS: std::sync::LazyLock<
    Mutex<std::collections::HashMap<String, tokio::net::unix::pipe::Sender>>,
> = std::sync::LazyLock::new(Default::default);

/// The path of a container's stdin FIFO.
pub fn stdin_path(dir: &Path, id: &str) -> PathBuf {
    dir.join(format!("{id}-stdin"))
}

/// Makes the stdin FIFO of a new container; unless `once`, kite keeps a write end open
/// for the container's life (stdin ends only when it does). Read-write opens do not wait
/// for the shim.
pub fn make_stdin(dir: &Path, id: &str, once: bool) -> std::io::Result<PathBuf> {
    let p = stdin_path(dir, id);
    let _ = std::fs::remove_file(&p);
    nix::unistd::mkfifo(&p, nix::sys::stat::Mode::from_bits_truncate(0o600))
        .map_err(std::io::Error::from)?;
    if !once {
        let keeper = tokio::net::unix::pipe::OpenOptions::new()
            .read_write(true)
            .open_sender(&p)?;
        STDIN_KEEPERS
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.to_string(), keeper);
    }
    Ok(p)
}

/// Listens to a running container's output; `None` when kite copies none for it.
pub fn tap(id: &str) -> Option<tokio::sync::broadcast::Receiver<Chunk>> {
    let taps = TAPS.lock().unwrap_or_else(|p| p.into_inner());
    taps.get(id).map(|t| t.tx.subscribe())
}

fn tap_feeder(id: &str) -> tokio::sync::broadcast::Sender<Chunk> {
    let mut taps = TAPS.lock().unwrap_or_else(|p| p.into_inner());
    let t = taps.entry(id.to_string()).or_insert_with(|| Tap {
        tx: tokio::sync::broadcast::channel(256).0,
        feeders: 0,
    });
    t.feeders += 1;
    t.tx.clone()
}

fn tap_done(id: &str) {
    let mut taps = TAPS.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(t) = taps.get_mut(id) {
        t.feeders -= 1;
        if t.feeders == 0 {
            taps.remove(id);
        }
    }
}

/// Waits (at most `max`) until no copy of container `id`'s output into its log is left:
/// its exit can be seen before its last words are in the log, as containerd's CRI waits
/// for a container's IO before it reports the exit.
pub async fn drained(id: &str, max: std::time::Duration) {
    let copying = || {
        TAPS.lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(id)
    };
    let until = tokio::time::Instant::now() + max;
    while copying() && tokio::time::Instant::now() < until {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

/// Copies one FIFO into the log until its writers are gone.
async fn copy_fifo(
    from: tokio::net::unix::pipe::Receiver,
    stream: &'static str,
    to: Arc<Mutex<CriFile>>,
    id: String,
) -> std::io::Result<()> {
    use tokio::io::AsyncReadExt;
    let tap = tap_feeder(&id);
    let mut from = from;
    let mut buf = vec![0u8; 32 * 1024];
    let mut split = Splitter::default();
    let r = async {
        loop {
            let n = from.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            if tap.receiver_count() > 0 {
                let _ = tap.send((stream, bytes::Bytes::copy_from_slice(&buf[..n])));
            }
            split.feed(&buf[..n], stream, &to)?;
        }
        split.finish(stream, &to)
    }
    .await;
    drop(tap);
    tap_done(&id);
    r
}

/// A container's stdout and stderr FIFOs, under `<dir>/<container id>-{stdout,stderr}`.
pub struct Fifos {
    pub stdout: PathBuf,
    pub stderr: PathBuf,
    /// A write end kite holds until the shim has opened its own, so the copier does not
    /// read an end of file before the container starts.
    keeper: Vec<File>,
}

impl Fifos {
    fn paths(dir: &Path, id: &str) -> (PathBuf, PathBuf) {
        (
            dir.join(format!("{id}-stdout")),
            dir.join(format!("{id}-stderr")),
        )
    }

    /// Makes the FIFOs of a new process and opens kite's read ends, holding write ends
    /// until [`Fifos::started`] so that no reader sees an end of file before the process
    /// has opened its own.
    pub(crate) fn make(
        dir: &Path,
        id: &str,
    ) -> std::io::Result<(Fifos, [tokio::net::unix::pipe::Receiver; 2])> {
        std::fs::create_dir_all(dir)?;
        let (stdout, stderr) = Self::paths(dir, id);
        for p in [&stdout, &stderr] {
            let _ = std::fs::remove_file(p);
            nix::unistd::mkfifo(p, nix::sys::stat::Mode::from_bits_truncate(0o600))
                .map_err(std::io::Error::from)?;
        }
        let mut f = Fifos {
            stdout,
            stderr,
            keeper: Vec::new(),
        };
        let readers = f.open_readers()?;
        for p in [&f.stdout, &f.stderr] {
            f.keeper.push(
                OpenOptions::new()
                    .write(true)
                    .custom_flags(nix::libc::O_NONBLOCK)
                    .open(p)?,
            );
        }
        Ok((f, readers))
    }

    /// Makes the FIFOs of a new container and starts copying them into `log`.
    pub fn create(dir: &Path, id: &str, log: &Path, rot: Rotation) -> std::io::Result<Fifos> {
        let (f, readers) = Self::make(dir, id)?;
        f.copy(id, readers, log, rot)?;
        Ok(f)
    }

    /// Once the shim has opened the FIFOs (the task exists), kite's write ends go: the copy
    /// ends when the container's output closes.
    pub fn started(&mut self) {
        self.keeper.clear();
    }

    /// Opens the FIFOs of a container kite made before it restarted, if they are still
    /// there, and copies them into `log` again. False when there is nothing to reattach.
    pub fn reattach(dir: &Path, id: &str, log: &Path, rot: Rotation) -> std::io::Result<bool> {
        let (stdout, stderr) = Self::paths(dir, id);
        if !stdout.exists() || !stderr.exists() {
            return Ok(false);
        }
        let f = Fifos {
            stdout,
            stderr,
            keeper: Vec::new(),
        };
        let readers = f.open_readers()?;
        f.copy(id, readers, log, rot)?;
        Ok(true)
    }

    /// Removes the FIFOs of a container that is gone.
    pub fn remove(dir: &Path, id: &str) {
        let (stdout, stderr) = Self::paths(dir, id);
        let _ = std::fs::remove_file(stdout);
        let _ = std::fs::remove_file(stderr);
        let _ = std::fs::remove_file(stdin_path(dir, id));
    }

    fn open_readers(&self) -> std::io::Result<[tokio::net::unix::pipe::Receiver; 2]> {
        let open = |p: &Path| tokio::net::unix::pipe::OpenOptions::new().open_receiver(p);
        Ok([open(&self.stdout)?, open(&self.stderr)?])
    }

    fn copy(
        &self,
        id: &str,
        [out, err]: [tokio::net::unix::pipe::Receiver; 2],
        log: &Path,
        rot: Rotation,
    ) -> std::io::Result<()> {
        let file = Arc::new(Mutex::new(CriFile::open(log, rot)?));
        let (stdout, stderr) = (self.stdout.clone(), self.stderr.clone());
        let log = log.to_path_buf();
        let id = id.to_string();
        let id2 = id.clone();
        let stdin = self.stdout.with_file_name(format!("{id}-stdin"));
        tokio::spawn(async move {
            let (a, b) = tokio::join!(
                copy_fifo(out, "stdout", file.clone(), id.clone()),
                copy_fifo(err, "stderr", file, id)
            );
            if let Err(e) = a.and(b) {
                tracing::warn!(log = %log.display(), error = %e, "copying a container's output");
            }
            // The writers are gone: the container has exited.
            let _ = std::fs::remove_file(stdout);
            let _ = std::fs::remove_file(stderr);
            let _ = std::fs::remove_file(stdin);
            STDIN_KEEPERS
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&id2);
        });
        Ok(())
    }
}

/// The output of a short-lived process (an exec probe or hook), stdout and stderr
/// together and cut at a limit, through FIFOs as a container's log.
pub struct Capture {
    pub fifos: Fifos,
    task: tokio::task::JoinHandle<Vec<u8>>,
}

impl Capture {
    pub fn new(dir: &Path, id: &str, limit: usize) -> std::io::Result<Capture> {
        let (fifos, [out, err]) = Fifos::make(dir, id)?;
        let (stdout, stderr) = (fifos.stdout.clone(), fifos.stderr.clone());
        let buf = Arc::new(Mutex::new(Vec::new()));
        let read = move |mut r: tokio::net::unix::pipe::Receiver, buf: Arc<Mutex<Vec<u8>>>| async move {
            use tokio::io::AsyncReadExt;
            let mut chunk = [0u8; 4096];
            while let Ok(n) = r.read(&mut chunk).await {
                if n == 0 {
                    break;
                }
                let mut b = buf.lock().unwrap_or_else(|p| p.into_inner());
                let room = limit.saturating_sub(b.len());
                b.extend_from_slice(&chunk[..n.min(room)]);
            }
        };
        let (b1, b2) = (buf.clone(), buf.clone());
        let task = tokio::spawn(async move {
            tokio::join!(read(out, b1), read(err, b2));
            let _ = std::fs::remove_file(stdout);
            let _ = std::fs::remove_file(stderr);
            let out = std::mem::take(&mut *buf.lock().unwrap_or_else(|p| p.into_inner()));
            out
        });
        Ok(Capture { fifos, task })
    }

    /// The process has its ends of the FIFOs (or never will).
    pub fn started(&mut self) {
        self.fifos.started();
    }

    /// What the process wrote, once it has closed its output (at most `wait` later).
    pub async fn output(mut self, wait: std::time::Duration) -> Vec<u8> {
        self.started();
        match tokio::time::timeout(wait, &mut self.task).await {
            Ok(Ok(out)) => out,
            _ => {
                self.task.abort();
                let _ = std::fs::remove_file(&self.fifos.stdout);
                let _ = std::fs::remove_file(&self.fifos.stderr);
                Vec::new()
            }
        }
    }
}

/// One record read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record<'a> {
    pub time: &'a str,
    pub stream: &'a str,
    pub full: bool,
    pub text: &'a [u8],
}

/// Parses one line of a CRI log (without its newline).
pub fn parse(line: &[u8]) -> Option<Record<'_>> {
    let mut parts = line.splitn(4, |b| *b == b' ');
    let time = std::str::from_utf8(parts.next()?).ok()?;
    let stream = std::str::from_utf8(parts.next()?).ok()?;
    let tag = parts.next()?;
    let text = parts.next().unwrap_or_default();
    Some(Record {
        time,
        stream,
        full: !tag.starts_with(b"P"),
        text,
    })
}

/// What `kubectl logs` asks for (the query of `/containerLogs`).
#[derive(Debug, Clone, Default)]
pub struct ReadOptions {
    pub follow: bool,
    pub tail_lines: Option<usize>,
    pub since: Option<jiff::Timestamp>,
    pub timestamps: bool,
    pub limit_bytes: Option<usize>,
}

/// Where a log read stands: the open file and the offset read up to.
pub struct Reader {
    path: PathBuf,
    file: BufReader<File>,
    ino: u64,
    opts: ReadOptions,
    written: usize,
}

impl Reader {
    /// Opens `path` and positions it for the options (tail lines from the end).
    pub fn open(path: &Path, opts: ReadOptions) -> std::io::Result<Reader> {
        let mut f = File::open(path)?;
        let ino = f.metadata()?.ino();
        if let Some(n) = opts.tail_lines {
            let off = tail_offset(&mut f, n)?;
            f.seek(SeekFrom::Start(off))?;
        }
        Ok(Reader {
            path: path.to_path_buf(),
            file: BufReader::new(f),
            ino,
            opts,
            written: 0,
        })
    }

    /// Whether the byte limit is reached.
    pub fn done(&self) -> bool {
        self.opts.limit_bytes.is_some_and(|l| self.written >= l)
    }

    /// Reads the records available now and renders them as `kubectl logs` prints them.
    /// When the file was rotated away and everything in it is read, goes on in the new one.
    pub fn next_chunk(&mut self) -> std::io::Result<Vec<u8>> {
        let mut out = Vec::new();
        let mut line = Vec::new();
        loop {
            if self.done() {
                break;
            }
            line.clear();
            let n = self.file.read_until(b'\n', &mut line)?;
            if n == 0 {
                // At the end: a rotated file goes on in the new one at the path.
                match std::fs::metadata(&self.path) {
                    Ok(m) if m.ino() != self.ino => {
                        let f = File::open(&self.path)?;
                        self.ino = f.metadata()?.ino();
                        self.file = BufReader::new(f);
                        continue;
                    }
                    _ => break,
                }
            }
            if !line.ends_with(b"\n") {
                // A record still being written: read it whole next time.
                let back = line.len() as i64;
                self.file.seek_relative(-back)?;
                break;
            }
            let Some(r) = parse(&line[..line.len() - 1]) else {
                continue;
            };
            if let Some(since) = self.opts.since {
                match r.time.parse::<jiff::Timestamp>() {
                    Ok(t) if t < since => continue,
                    _ => {}
                }
            }
            let mut rendered = Vec::with_capacity(r.text.len() + 40);
            if self.opts.timestamps {
                rendered.extend_from_slice(r.time.as_bytes());
                rendered.push(b' ');
            }
            rendered.extend_from_slice(r.text);
            if r.full {
                rendered.push(b'\n');
            }
            if let Some(limit) = self.opts.limit_bytes {
                rendered.truncate(limit - self.written);
            }
            self.written += rendered.len();
            out.extend_from_slice(&rendered);
        }
        Ok(out)
    }
}

/// The offset of the `n`th line from the end of `f` (0 if it has fewer lines).
fn tail_offset(f: &mut File, n: usize) -> std::io::Result<u64> {
    let len = f.metadata()?.len();
    if n == 0 {
        return Ok(len);
    }
    let mut pos = len;
    let mut newlines = 0;
    let mut buf = vec![0u8; 8192];
    // The file's last byte is the last record's newline: it does not start a line.
    let mut skip_last = true;
    while pos > 0 {
        let step = (pos as usize).min(buf.len());
        pos -= step as u64;
        f.seek(SeekFrom::Start(pos))?;
        f.read_exact(&mut buf[..step])?;
        for i in (0..step).rev() {
            if buf[i] == b'\n' {
                if skip_last {
                    skip_last = false;
                    continue;
                }
                newlines += 1;
                if newlines == n {
                    return Ok(pos + i as u64 + 1);
                }
            }
            skip_last = false;
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn drained_waits_for_the_copy_and_no_longer_than_asked() {
        use std::time::{Duration, Instant};
        // No copy of this container's output: at once.
        let t = Instant::now();
        super::drained("never-copied", Duration::from_secs(5)).await;
        assert!(t.elapsed() < Duration::from_secs(1));
        // A copy that ends after 50 ms: until then.
        let _tap = super::tap_feeder("copied");
        tokio::spawn(async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            super::tap_done("copied");
        });
        let t = Instant::now();
        super::drained("copied", Duration::from_secs(5)).await;
        assert!(t.elapsed() >= Duration::from_millis(40) && t.elapsed() < Duration::from_secs(4));
        // A copy that never ends: the bound.
        let _stuck = super::tap_feeder("stuck");
        let t = Instant::now();
        super::drained("stuck", Duration::from_millis(100)).await;
        assert!(t.elapsed() >= Duration::from_millis(100));
        super::tap_done("stuck");
    }

    use super::*;

    fn read_all(path: &Path, opts: ReadOptions) -> String {
        let mut r = Reader::open(path, opts).unwrap();
        String::from_utf8(r.next_chunk().unwrap()).unwrap()
    }

    #[test]
    fn records_lines_and_pieces() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("0.log");
        let f = Mutex::new(CriFile::open(&path, Rotation::default()).unwrap());
        let long = "x".repeat(MAX_RECORD + 10);
        let input = format!("one\n\n{long}\ntwo");
        let mut split = Splitter::default();
        // In uneven pieces, as a pipe delivers them.
        for piece in input.as_bytes().chunks(7000) {
            split.feed(piece, "stdout", &f).unwrap();
        }
        split.finish("stdout", &f).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let tags: Vec<(&str, &str)> = text
            .lines()
            .map(|l| {
                let p: Vec<&str> = l.splitn(4, ' ').collect();
                (p[1], p[2])
            })
            .collect();
        assert_eq!(
            tags,
            [
                ("stdout", "F"),
                ("stdout", "F"),
                ("stdout", "P"),
                ("stdout", "F"),
                ("stdout", "F")
            ]
        );
        assert_eq!(
            read_all(&path, ReadOptions::default()),
            format!("one\n\n{long}\ntwo\n")
        );
        assert_eq!(
            read_all(
                &path,
                ReadOptions {
                    tail_lines: Some(1),
                    ..Default::default()
                }
            ),
            "two\n"
        );
        assert_eq!(
            read_all(
                &path,
                ReadOptions {
                    limit_bytes: Some(5),
                    ..Default::default()
                }
            ),
            "one\n\n"
        );
        let stamped = read_all(
            &path,
            ReadOptions {
                timestamps: true,
                tail_lines: Some(1),
                ..Default::default()
            },
        );
        let (ts, rest) = stamped.split_once(' ').unwrap();
        assert!(ts.parse::<jiff::Timestamp>().is_ok(), "{ts}");
        assert_eq!(rest, "two\n");
        let later = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(5);
        assert_eq!(
            read_all(
                &path,
                ReadOptions {
                    since: Some(later),
                    ..Default::default()
                }
            ),
            ""
        );
    }

    #[test]
    fn rotates_by_size_and_keeps_max_files() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("0.log");
        let rot = Rotation {
            max_size: 200,
            max_files: 3,
        };
        let mut f = CriFile::open(&path, rot).unwrap();
        let mut r = Reader::open(&path, ReadOptions::default()).unwrap();
        let mut seen = String::new();
        for i in 0..40 {
            f.record("stdout", true, format!("line {i}").as_bytes())
                .unwrap();
            seen.push_str(&String::from_utf8(r.next_chunk().unwrap()).unwrap());
        }
        // A follower reads on across rotations and misses nothing.
        let want: String = (0..40).map(|i| format!("line {i}\n")).collect();
        assert_eq!(seen, want);
        assert_eq!(rotated(&path).len(), 2);
        assert!(std::fs::metadata(&path).unwrap().len() <= 200);
    }

    #[tokio::test]
    async fn fifos_are_copied_until_the_writers_close() {
        let d = tempfile::tempdir().unwrap();
        let log = d.path().join("logs/c/0.log");
        let mut f = Fifos::create(&d.path().join("io"), "abc", &log, Rotation::default()).unwrap();
        // The "shim": writes to both FIFOs, then closes them.
        let mut out = OpenOptions::new().write(true).open(&f.stdout).unwrap();
        let mut err = OpenOptions::new().write(true).open(&f.stderr).unwrap();
        f.started();
        out.write_all(b"hello\nwor").unwrap();
        err.write_all(b"oops\n").unwrap();
        out.write_all(b"ld\n").unwrap();
        drop((out, err));
        for _ in 0..100 {
            if !f.stdout.exists() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert!(!f.stdout.exists(), "the FIFOs go once the writers are gone");
        let text = std::fs::read_to_string(&log).unwrap();
        let mut recs: Vec<String> = text
            .lines()
            .map(|l| l.split_once(' ').unwrap().1.to_string())
            .collect();
        recs.sort();
        assert_eq!(recs, ["stderr F oops", "stdout F hello", "stdout F world"]);
    }
}
