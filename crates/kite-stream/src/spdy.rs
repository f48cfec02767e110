//! SPDY/3.1, the server side, as far as Kubernetes' streaming clients use it (client-go's
//! `httpstream/spdy` over `moby/spdystream`): the client opens streams (SYN_STREAM with
//! headers such as `streamType` or `port`), both ends send DATA and half-close with FIN, and
//! the server answers pings. There is no flow control: spdystream neither sends nor honours
//! WINDOW_UPDATE, so neither does this. Header blocks are zlib streams primed with the
//! protocol's dictionary, one per direction for the life of the connection.
//!
//! [`serve`] runs a connection on any byte stream (a TLS connection after an HTTP upgrade)
//! and hands over each stream the client opens, once it has been accepted and replied to;
//! [`serve_parts`] does the same with frames written to a [`FrameSink`] (one WebSocket
//! message per frame, when SPDY is tunnelled, handed over without another copy).

use bytes::{Buf, BufMut, Bytes, BytesMut};
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, Mutex};

const VERSION: u16 = 3;
const SYN_STREAM: u16 = 1;
const SYN_REPLY: u16 = 2;
const RST_STREAM: u16 = 3;
const PING: u16 = 6;
const GOAWAY: u16 = 7;
const FLAG_FIN: u8 = 0x01;
/// RST_STREAM status codes.
pub const REFUSED_STREAM: u32 = 3;
pub const CANCEL: u32 = 5;
/// The largest frame accepted: the protocol allows 2^24-1 bytes; clients send 32 KiB.
const MAX_FRAME: usize = (1 << 24) - 1;
/// How much data one DATA frame carries when kite writes (spdystream reads any size).
const WRITE_CHUNK: usize = 64 * 1024;
/// The room a buffer leaves before its data for [`StreamWriter::write_framed`]: a DATA
/// frame's header.
pub const DATA_HEADER: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum SpdyError {
    #[error("SPDY: {0}")]
    Protocol(String),
    #[error("SPDY header compression: {0}")]
    Zlib(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// A stream's headers, names lower-cased, values of repeated names joined by NUL as on
/// the wire.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Headers(pub Vec<(String, String)>);

impl Headers {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One frame, as far as a server needs to tell them apart.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    SynStream {
        id: u32,
        fin: bool,
        headers: Headers,
    },
    SynReply {
        id: u32,
        fin: bool,
        headers: Headers,
    },
    RstStream {
        id: u32,
        status: u32,
    },
    Ping(u32),
    GoAway {
        last: u32,
        status: u32,
    },
    Data {
        id: u32,
        fin: bool,
        data: Bytes,
    },
    /// SETTINGS, HEADERS, WINDOW_UPDATE and anything newer: read and let be.
    Other(u16),
}

/// One direction's header compression: a zlib stream primed with the dictionary.
pub struct Deflater(Compress);

impl Default for Deflater {
    fn default() -> Self {
        let mut c = Compress::new(Compression::default(), true);
        c.set_dictionary(crate::dictionary::DICTIONARY)
            .expect("a fresh zlib stream takes a dictionary");
        Deflater(c)
    }
}

impl Deflater {
    fn block(&mut self, headers: &Headers) -> Result<Vec<u8>, SpdyError> {
        let mut raw = BytesMut::new();
        raw.put_u32(headers.0.len() as u32);
        for (n, v) in &headers.0 {
            raw.put_u32(n.len() as u32);
            raw.put_slice(n.to_ascii_lowercase().as_bytes());
            raw.put_u32(v.len() as u32);
            raw.put_slice(v.as_bytes());
        }
        let mut out = Vec::with_capacity(raw.len() + 64);
        let mut input: &[u8] = &raw;
        loop {
            out.reserve(256);
            let before = self.0.total_in();
            self.0
                .compress_vec(input, &mut out, FlushCompress::Sync)
                .map_err(|e| SpdyError::Zlib(e.to_string()))?;
            let used = (self.0.total_in() - before) as usize;
            input = &input[used..];
            // A sync flush is complete when all input is taken and output had room.
            if input.is_empty() && out.len() < out.capacity() {
                return Ok(out);
            }
        }
    }
}

/// The other direction's: inflates header blocks, asking for the dictionary when the
/// stream says it was primed.
pub struct Inflater(Decompress);

impl Default for Inflater {
    fn default() -> Self {
        Inflater(Decompress::new(true))
    }
}

impl Inflater {
    fn block(&mut self, mut input: &[u8]) -> Result<Headers, SpdyError> {
        let mut out = Vec::with_capacity(input.len() * 4 + 64);
        loop {
            out.reserve(1024);
            let before = self.0.total_in();
            match self
                .0
                .decompress_vec(input, &mut out, FlushDecompress::Sync)
            {
                Ok(Status::StreamEnd) => break,
                Ok(_) => {}
                Err(e) if e.needs_dictionary().is_some() => {
                    self.0
                        .set_dictionary(crate::dictionary::DICTIONARY)
                        .map_err(|e| SpdyError::Zlib(e.to_string()))?;
                }
                Err(e) => return Err(SpdyError::Zlib(e.to_string())),
            }
            let used = (self.0.total_in() - before) as usize;
            input = &input[used..];
            if input.is_empty() && out.len() < out.capacity() {
                break;
            }
        }
        parse_block(&out)
    }
}

fn parse_block(mut b: &[u8]) -> Result<Headers, SpdyError> {
    let bad = || SpdyError::Protocol("truncated header block".into());
    let take = |b: &mut &[u8]| -> Result<String, SpdyError> {
        if b.remaining() < 4 {
            return Err(bad());
        }
        let n = b.get_u32() as usize;
        if b.remaining() < n {
            return Err(bad());
        }
        let s = String::from_utf8_lossy(&b[..n]).into_owned();
        b.advance(n);
        Ok(s)
    };
    if b.remaining() < 4 {
        return Err(bad());
    }
    let count = b.get_u32() as usize;
    let mut out = Vec::with_capacity(count.min(64));
    for _ in 0..count {
        let name = take(&mut b)?;
        let value = take(&mut b)?;
        out.push((name.to_ascii_lowercase(), value));
    }
    Ok(Headers(out))
}

/// Reads one frame; `None` at a clean end of the connection.
pub async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    inflater: &mut Inflater,
) -> Result<Option<Frame>, SpdyError> {
    let mut head = [0u8; 8];
    match r.read_exact(&mut head).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let flags = head[4];
    let len = u32::from_be_bytes([0, head[5], head[6], head[7]]) as usize;
    if len > MAX_FRAME {
        return Err(SpdyError::Protocol(format!("frame of {len} bytes")));
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).await?;
    let fin = flags & FLAG_FIN != 0;
    if head[0] & 0x80 == 0 {
        let id = u32::from_be_bytes([head[0], head[1], head[2], head[3]]) & 0x7fff_ffff;
        return Ok(Some(Frame::Data {
            id,
            fin,
            data: Bytes::from(body),
        }));
    }
    let version = u16::from_be_bytes([head[0], head[1]]) & 0x7fff;
    let kind = u16::from_be_bytes([head[2], head[3]]);
    if version != VERSION {
        return Err(SpdyError::Protocol(format!("version {version}")));
    }
    let short = || SpdyError::Protocol(format!("short control frame of type {kind}"));
    let mut b: &[u8] = &body;
    let id31 = |b: &mut &[u8]| b.get_u32() & 0x7fff_ffff;
    Ok(Some(match kind {
        SYN_STREAM => {
            if b.remaining() < 10 {
                return Err(short());
            }
            let id = id31(&mut b);
            b.advance(6); // associated stream, priority, slot
            let headers = inflater.block(b)?;
            Frame::SynStream { id, fin, headers }
        }
        SYN_REPLY => {
            if b.remaining() < 4 {
                return Err(short());
            }
            let id = id31(&mut b);
            let headers = inflater.block(b)?;
            Frame::SynReply { id, fin, headers }
        }
        RST_STREAM => {
            if b.remaining() < 8 {
                return Err(short());
            }
            let id = id31(&mut b);
            Frame::RstStream {
                id,
                status: b.get_u32(),
            }
        }
        PING => {
            if b.remaining() < 4 {
                return Err(short());
            }
            Frame::Ping(b.get_u32())
        }
        GOAWAY => {
            if b.remaining() < 8 {
                return Err(short());
            }
            let last = id31(&mut b);
            Frame::GoAway {
                last,
                status: b.get_u32(),
            }
        }
        other => {
            // HEADERS carry a compressed block: it must still pass through the inflater
            // so that later blocks decompress.
            if other == 8 && b.remaining() >= 4 {
                b.advance(4);
                inflater.block(b)?;
            }
            Frame::Other(other)
        }
    }))
}

/// Encodes one frame.
pub fn encode(frame: &Frame, deflater: &mut Deflater) -> Result<Vec<u8>, SpdyError> {
    let control = |kind: u16, flags: u8, body: &[u8]| {
        let mut out = Vec::with_capacity(8 + body.len());
        out.extend_from_slice(&(0x8000 | VERSION).to_be_bytes());
        out.extend_from_slice(&kind.to_be_bytes());
        out.push(flags);
        out.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        out.extend_from_slice(body);
        out
    };
    let fin = |f: bool| if f { FLAG_FIN } else { 0 };
    Ok(match frame {
        Frame::SynStream {
            id,
            fin: f,
            headers,
        } => {
            let mut body = Vec::new();
            body.extend_from_slice(&id.to_be_bytes());
            body.extend_from_slice(&[0; 6]);
            body.extend(deflater.block(headers)?);
            control(SYN_STREAM, fin(*f), &body)
        }
        Frame::SynReply {
            id,
            fin: f,
            headers,
        } => {
            let mut body = id.to_be_bytes().to_vec();
            body.extend(deflater.block(headers)?);
            control(SYN_REPLY, fin(*f), &body)
        }
        Frame::RstStream { id, status } => {
            let mut body = id.to_be_bytes().to_vec();
            body.extend_from_slice(&status.to_be_bytes());
            control(RST_STREAM, 0, &body)
        }
        Frame::Ping(id) => control(PING, 0, &id.to_be_bytes()),
        Frame::GoAway { last, status } => {
            let mut body = last.to_be_bytes().to_vec();
            body.extend_from_slice(&status.to_be_bytes());
            control(GOAWAY, 0, &body)
        }
        Frame::Data { id, fin: f, data } => {
            let mut out = Vec::with_capacity(8 + data.len());
            out.extend_from_slice(&(id & 0x7fff_ffff).to_be_bytes());
            out.push(fin(*f));
            out.extend_from_slice(&(data.len() as u32).to_be_bytes()[1..]);
            out.extend_from_slice(data);
            out
        }
        Frame::Other(k) => return Err(SpdyError::Protocol(format!("cannot write frame {k}"))),
    })
}

/// What the writer task is asked to do.
enum Out {
    Frame(Frame),
    /// A DATA frame already encoded, header and data in one buffer.
    Encoded(Bytes),
    /// Flush, say GOAWAY, and close the connection.
    Close,
}

/// A stream the client opened: its headers, what the client sends on it (ending at the
/// client's FIN, a reset, or the end of the connection), and the way to answer.
pub struct Stream {
    pub id: u32,
    pub headers: Headers,
    pub rx: mpsc::Receiver<Bytes>,
    pub tx: StreamWriter,
}

/// The sending half of a stream.
#[derive(Clone)]
pub struct StreamWriter {
    id: u32,
    out: mpsc::Sender<Out>,
    /// Whether kite has sent FIN or RST, or the client reset the stream.
    closed: Arc<std::sync::atomic::AtomicBool>,
}

impl StreamWriter {
    fn is_closed(&self) -> bool {
        self.closed.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Sends `data` (in frames of at most 32 KiB); fails once the stream or connection
    /// is closed.
    pub async fn write(&self, data: &[u8]) -> std::io::Result<()> {
        self.write_bytes(Bytes::copy_from_slice(data)).await
    }

    /// As [`StreamWriter::write`], for data already in a `Bytes`: the frames share its
    /// buffer (no copy; a port-forward moves every byte through here).
    pub async fn write_bytes(&self, data: Bytes) -> std::io::Result<()> {
        let gone = || std::io::Error::new(std::io::ErrorKind::BrokenPipe, "stream closed");
        let mut at = 0;
        while at < data.len() {
            if self.is_closed() {
                return Err(gone());
            }
            let end = (at + WRITE_CHUNK).min(data.len());
            self.out
                .send(Out::Frame(Frame::Data {
                    id: self.id,
                    fin: false,
                    data: data.slice(at..end),
                }))
                .await
                .map_err(|_| gone())?;
            at = end;
        }
        Ok(())
    }

    /// As [`StreamWriter::write_bytes`], for data read into `buf` after [`DATA_HEADER`]
    /// bytes of room: the frame's header is written there and the buffer goes out as one
    /// DATA frame, with no copy (a port-forward's bytes, read from the pod's socket).
    pub async fn write_framed(&self, mut buf: BytesMut) -> std::io::Result<()> {
        let len = buf.len().saturating_sub(DATA_HEADER);
        if buf.len() < DATA_HEADER || len > MAX_FRAME {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "a framed write needs the header's room and at most 2^24-1 bytes",
            ));
        }
        if self.is_closed() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::BrokenPipe,
                "stream closed",
            ));
        }
        buf[..4].copy_from_slice(&(self.id & 0x7fff_ffff).to_be_bytes());
        buf[4..8].copy_from_slice(&(len as u32).to_be_bytes());
        buf[4] = 0;
        self.out
            .send(Out::Encoded(buf.freeze()))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "stream closed"))
    }

    /// Half-closes the stream (FIN); later writes fail.
    pub async fn close(&self) {
        if !self.closed.swap(true, std::sync::atomic::Ordering::AcqRel) {
            let _ = self
                .out
                .send(Out::Frame(Frame::Data {
                    id: self.id,
                    fin: true,
                    data: Bytes::new(),
                }))
                .await;
        }
    }

    /// Resets the stream (RST_STREAM, CANCEL).
    pub async fn reset(&self) {
        if !self.closed.swap(true, std::sync::atomic::Ordering::AcqRel) {
            let _ = self
                .out
                .send(Out::Frame(Frame::RstStream {
                    id: self.id,
                    status: CANCEL,
                }))
                .await;
        }
    }
}

/// A served connection: its streams as the client opens them, and the way to close it.
pub struct Session {
    pub streams: mpsc::Receiver<Stream>,
    out: mpsc::Sender<Out>,
}

impl Session {
    /// Sends what is queued, then GOAWAY, and closes the connection.
    pub async fn close(self) {
        let _ = self.out.send(Out::Close).await;
    }
}

/// Whether to take a stream with these headers; an error resets it (REFUSED_STREAM).
pub type Accept = Box<dyn Fn(&Headers) -> Result<(), String> + Send + Sync>;

/// Where a session writes its frames, each encoded whole.
pub trait FrameSink: Send + 'static {
    /// Queues one frame.
    fn send(&mut self, frame: Bytes) -> impl Future<Output = std::io::Result<()>> + Send;
    /// Writes out what is queued.
    fn flush(&mut self) -> impl Future<Output = std::io::Result<()>> + Send;
    /// Ends the connection's sending side.
    fn close(&mut self) -> impl Future<Output = std::io::Result<()>> + Send;
}

/// A byte stream's write half as a [`FrameSink`].
pub struct Bytewise<W>(pub W);

impl<W: AsyncWrite + Unpin + Send + 'static> FrameSink for Bytewise<W> {
    async fn send(&mut self, frame: Bytes) -> std::io::Result<()> {
        self.0.write_all(&frame).await
    }
    async fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush().await
    }
    async fn close(&mut self) -> std::io::Result<()> {
        self.0.shutdown().await
    }
}

/// Serves a SPDY connection on `io` (already upgraded): every stream the client opens and
/// `accept` takes is replied to and handed over on [`Session::streams`]. The connection
/// ends when the client closes it or says GOAWAY, or on [`Session::close`].
pub fn serve<IO>(io: IO, accept: Accept) -> Session
where
    IO: AsyncRead + AsyncWrite + Send + 'static,
{
    let (rd, wr) = tokio::io::split(io);
    serve_parts(rd, Bytewise(wr), accept)
}

/// As [`serve`], reading the client's bytes from `rd` and writing frames to `wr`.
pub fn serve_parts<R, S>(mut rd: R, mut wr: S, accept: Accept) -> Session
where
    R: AsyncRead + Unpin + Send + 'static,
    S: FrameSink,
{
    let (out_tx, mut out_rx) = mpsc::channel::<Out>(64);
    let (stream_tx, stream_rx) = mpsc::channel::<Stream>(16);
    let done = Arc::new(tokio::sync::Notify::new());

    // Writer: frames in queue order, flushed when the queue runs dry.
    let writer_done = done.clone();
    tokio::spawn(async move {
        let mut deflater = Deflater::default();
        let mut last_id = 0u32;
        loop {
            let Some(item) = out_rx.recv().await else {
                break;
            };
            let close = match item {
                Out::Frame(f) => {
                    if let Frame::SynReply { id, .. } = &f {
                        last_id = last_id.max(*id);
                    }
                    match encode(&f, &mut deflater) {
                        Ok(b) => {
                            if wr.send(Bytes::from(b)).await.is_err() {
                                break;
                            }
                        }
                        Err(e) => {
                            tracing::debug!(error = %e, "SPDY frame not written");
                        }
                    }
                    false
                }
                Out::Encoded(b) => {
                    if wr.send(b).await.is_err() {
                        break;
                    }
                    false
                }
                Out::Close => {
                    let goaway = Frame::GoAway {
                        last: last_id,
                        status: 0,
                    };
                    if let Ok(b) = encode(&goaway, &mut deflater) {
                        let _ = wr.send(Bytes::from(b)).await;
                    }
                    true
                }
            };
            if (close || out_rx.is_empty()) && wr.flush().await.is_err() {
                break;
            }
            if close {
                break;
            }
        }
        let _ = wr.close().await;
        writer_done.notify_waiters();
        writer_done.notify_one();
    });

    // Reader: dispatches frames to the streams.
    let out = out_tx.clone();
    tokio::spawn(async move {
        let mut inflater = Inflater::default();
        let streams: Arc<Mutex<HashMap<u32, StreamIn>>> = Default::default();
        loop {
            let frame = tokio::select! {
                f = read_frame(&mut rd, &mut inflater) => f,
                _ = done.notified() => break,
            };
            let frame = match frame {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!(error = %e, "SPDY connection ends");
                    break;
                }
            };
            match frame {
                Frame::SynStream { id, fin, headers } => {
                    if let Err(e) = accept(&headers) {
                        tracing::debug!(stream = id, error = %e, "SPDY stream refused");
                        let _ = out
                            .send(Out::Frame(Frame::RstStream {
                                id,
                                status: REFUSED_STREAM,
                            }))
                            .await;
                        continue;
                    }
                    let (data_tx, data_rx) = mpsc::channel(64);
                    let closed = Arc::new(std::sync::atomic::AtomicBool::new(false));
                    if !fin {
                        streams.lock().await.insert(
                            id,
                            StreamIn {
                                data: data_tx,
                                closed: closed.clone(),
                            },
                        );
                    }
                    let _ = out
                        .send(Out::Frame(Frame::SynReply {
                            id,
                            fin: false,
                            headers: Headers::default(),
                        }))
                        .await;
                    let s = Stream {
                        id,
                        headers,
                        rx: data_rx,
                        tx: StreamWriter {
                            id,
                            out: out.clone(),
                            closed,
                        },
                    };
                    if stream_tx.send(s).await.is_err() {
                        break;
                    }
                }
                Frame::Data { id, fin, data } => {
                    let target = streams.lock().await.get(&id).map(|s| s.data.clone());
                    if let Some(t) = target {
                        if !data.is_empty() {
                            let _ = t.send(data).await;
                        }
                    }
                    if fin {
                        streams.lock().await.remove(&id);
                    }
                }
                Frame::RstStream { id, .. } => {
                    if let Some(s) = streams.lock().await.remove(&id) {
                        s.closed.store(true, std::sync::atomic::Ordering::Release);
                    }
                }
                // Pings from the client (odd ids) are echoed; the server sends none.
                Frame::Ping(id) if id & 1 == 1 => {
                    let _ = out.send(Out::Frame(Frame::Ping(id))).await;
                }
                Frame::GoAway { .. } => break,
                _ => {}
            }
        }
        // The client's side is over: every stream's input ends.
        streams.lock().await.clear();
    });

    Session {
        streams: stream_rx,
        out: out_tx,
    }
}

struct StreamIn {
    data: mpsc::Sender<Bytes>,
    closed: Arc<std::sync::atomic::AtomicBool>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hdrs(pairs: &[(&str, &str)]) -> Headers {
        Headers(
            pairs
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
        )
    }

    #[tokio::test]
    async fn frames_round_trip_with_one_zlib_stream_per_direction() {
        let mut d = Deflater::default();
        let frames = vec![
            Frame::SynStream {
                id: 1,
                fin: false,
                headers: hdrs(&[("streamtype", "error"), ("port", "80")]),
            },
            Frame::SynStream {
                id: 3,
                fin: true,
                headers: hdrs(&[("streamtype", "data"), ("port", "80")]),
            },
            Frame::SynReply {
                id: 3,
                fin: false,
                headers: Headers::default(),
            },
            Frame::Data {
                id: 3,
                fin: true,
                data: Bytes::from_static(b"hello"),
            },
            Frame::RstStream { id: 5, status: 5 },
            Frame::Ping(7),
            Frame::GoAway { last: 3, status: 0 },
        ];
        let mut wire = Vec::new();
        for f in &frames {
            wire.extend(encode(f, &mut d).unwrap());
        }
        let mut r: &[u8] = &wire;
        let mut i = Inflater::default();
        for want in &frames {
            let got = read_frame(&mut r, &mut i).await.unwrap().unwrap();
            assert_eq!(&got, want);
        }
        assert!(read_frame(&mut r, &mut i).await.unwrap().is_none());
    }

    #[test]
    fn header_blocks_of_a_zlib_stream_without_the_dictionary_also_read() {
        // A peer that does not prime its stream (the dictionary is only used when the
        // zlib header says so).
        let mut c = Compress::new(Compression::default(), true);
        let mut raw = Vec::new();
        raw.extend_from_slice(&1u32.to_be_bytes());
        raw.extend_from_slice(&4u32.to_be_bytes());
        raw.extend_from_slice(b"port");
        raw.extend_from_slice(&2u32.to_be_bytes());
        raw.extend_from_slice(b"80");
        let mut out = Vec::with_capacity(256);
        c.compress_vec(&raw, &mut out, FlushCompress::Sync).unwrap();
        let h = Inflater::default().block(&out).unwrap();
        assert_eq!(h.get("Port"), Some("80"));
    }

    #[tokio::test]
    async fn a_session_replies_answers_pings_and_delivers_data() {
        let (client, server) = tokio::io::duplex(1 << 16);
        let mut session = serve(
            server,
            Box::new(|h: &Headers| match h.get("streamtype") {
                Some("error" | "data") => Ok(()),
                _ => Err("bad stream type".into()),
            }),
        );
        let (mut cr, mut cw) = tokio::io::split(client);
        let mut d = Deflater::default();
        let mut send = |f: Frame| encode(&f, &mut d).unwrap();
        let mut wire = Vec::new();
        wire.extend(send(Frame::SynStream {
            id: 1,
            fin: false,
            headers: hdrs(&[("streamtype", "data")]),
        }));
        wire.extend(send(Frame::SynStream {
            id: 3,
            fin: false,
            headers: hdrs(&[("streamtype", "bogus")]),
        }));
        wire.extend(send(Frame::Ping(9)));
        wire.extend(send(Frame::Data {
            id: 1,
            fin: true,
            data: Bytes::from_static(b"ping?"),
        }));
        cw.write_all(&wire).await.unwrap();

        let mut s = session.streams.recv().await.unwrap();
        assert_eq!(s.id, 1);
        assert_eq!(s.rx.recv().await.unwrap(), Bytes::from_static(b"ping?"));
        assert!(s.rx.recv().await.is_none(), "FIN ends the stream's input");
        s.tx.write(b"pong").await.unwrap();
        let mut framed = BytesMut::from(&[0u8; DATA_HEADER][..]);
        framed.extend_from_slice(b"framed");
        s.tx.write_framed(framed).await.unwrap();
        assert!(
            s.tx.write_framed(BytesMut::from(&b"short"[..]))
                .await
                .is_err(),
            "a buffer without the header's room is refused"
        );
        s.tx.close().await;
        assert!(s.tx.write(b"late").await.is_err());
        assert!(s
            .tx
            .write_framed(BytesMut::zeroed(DATA_HEADER + 1))
            .await
            .is_err());
        session.close().await;

        let mut i = Inflater::default();
        let mut got = Vec::new();
        while let Some(f) = read_frame(&mut cr, &mut i).await.unwrap() {
            got.push(f);
        }
        assert_eq!(
            got,
            vec![
                Frame::SynReply {
                    id: 1,
                    fin: false,
                    headers: Headers::default()
                },
                Frame::RstStream {
                    id: 3,
                    status: REFUSED_STREAM
                },
                Frame::Ping(9),
                Frame::Data {
                    id: 1,
                    fin: false,
                    data: Bytes::from_static(b"pong")
                },
                Frame::Data {
                    id: 1,
                    fin: false,
                    data: Bytes::from_static(b"framed")
                },
                Frame::Data {
                    id: 1,
                    fin: true,
                    data: Bytes::new()
                },
                Frame::GoAway { last: 1, status: 0 },
            ]
        );
    }
}
