//! hyper answers a request it cannot parse (a malformed request line or header, a head
//! beyond its buffer) itself, before any service runs, with an empty body. Clients of
//! this relay parse Anthropic's error shape, so a connection whose first request never
//! reached the service has hyper's answer replaced by the same status with an
//! Anthropic-shaped body. Once a request has been dispatched, bytes pass untouched.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Set by the service when a request reaches it.
#[derive(Clone, Default)]
pub(crate) struct Dispatched(Arc<AtomicBool>);

impl Dispatched {
    pub(crate) fn mark(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    fn get(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// What the wrapper is doing with writes.
enum State {
    /// Nothing written yet.
    Fresh,
    /// Bytes pass through.
    Pass,
    /// Writing the replacement from `pos`; hyper's own bytes are swallowed.
    Replacing { bytes: Vec<u8>, pos: usize },
    /// The replacement is out; anything hyper still writes is swallowed.
    Replaced,
}

/// A connection's IO with hyper's own error answers reshaped.
pub(crate) struct Shaped<IO> {
    io: IO,
    dispatched: Dispatched,
    state: State,
}

impl<IO> Shaped<IO> {
    pub(crate) fn new(io: IO, dispatched: Dispatched) -> Self {
        Self {
            io,
            dispatched,
            state: State::Fresh,
        }
    }
}

/// The Anthropic-shaped answer for hyper's status line at the start of `head`, if it is
/// one of hyper's parse-error answers.
pub(crate) fn replacement(head: &[u8]) -> Option<Vec<u8>> {
    let status = head.strip_prefix(b"HTTP/1.1 ")?.get(..3)?;
    let (code, reason, kind, message) = match status {
        b"400" => (
            400,
            "Bad Request",
            "invalid_request_error",
            "malformed HTTP request",
        ),
        b"431" => (
            431,
            "Request Header Fields Too Large",
            "request_too_large",
            "request headers too large",
        ),
        b"414" => (
            414,
            "URI Too Long",
            "request_too_large",
            "request URI too long",
        ),
        b"505" => (
            505,
            "HTTP Version Not Supported",
            "invalid_request_error",
            "HTTP version not supported",
        ),
        _ => return None,
    };
    let body =
        format!(r#"{{"type":"error","error":{{"type":"{kind}","message":"relay: {message}"}}}}"#);
    Some(
        format!(
            "HTTP/1.1 {code} {reason}\r\ncontent-type: application/json\r\n\
             connection: close\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes(),
    )
}

impl<IO: AsyncRead + Unpin> AsyncRead for Shaped<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<IO: AsyncWrite + Unpin> Shaped<IO> {
    /// Writes what is left of the replacement; ready when all of it is out.
    fn drive(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let State::Replacing { bytes, pos } = &mut self.state {
            if *pos == bytes.len() {
                self.state = State::Replaced;
                break;
            }
            let n = std::task::ready!(Pin::new(&mut self.io).poll_write(cx, &bytes[*pos..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *pos += n;
        }
        Poll::Ready(Ok(()))
    }

    /// Decides, at the first write, whether this is hyper's own answer.
    fn first_write(&mut self, head: &[u8]) {
        if let State::Fresh = self.state {
            self.state = match (self.dispatched.get(), replacement(head)) {
                (false, Some(bytes)) => State::Replacing { bytes, pos: 0 },
                _ => State::Pass,
            };
        }
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Shaped<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        this.first_write(buf);
        match this.state {
            State::Pass => Pin::new(&mut this.io).poll_write(cx, buf),
            _ => {
                std::task::ready!(this.drive(cx))?;
                Poll::Ready(Ok(buf.len()))
            }
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if let Some(first) = bufs.iter().find(|b| !b.is_empty()) {
            this.first_write(first);
        }
        match this.state {
            State::Pass | State::Fresh => Pin::new(&mut this.io).poll_write_vectored(cx, bufs),
            _ => {
                std::task::ready!(this.drive(cx))?;
                Poll::Ready(Ok(bufs.iter().map(|b| b.len()).sum()))
            }
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        std::task::ready!(this.drive(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        std::task::ready!(this.drive(cx))?;
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[test]
    fn hyper_statuses_get_a_body_others_do_not() {
        let r = replacement(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n").unwrap();
        let text = String::from_utf8(r).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 400 Bad Request\r\n"));
        assert!(head.contains(&format!("content-length: {}", body.len())));
        let v: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(v["type"], "error");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert!(replacement(b"HTTP/1.1 431 Request Header Fields Too Large\r\n").is_some());
        assert!(replacement(b"HTTP/1.1 200 OK\r\n").is_none());
        assert!(replacement(b"HTTP/1.1 404 Not Found\r\n").is_none());
        assert!(replacement(b"garbage").is_none());
    }

    async fn written(dispatched: bool, writes: &[&[u8]]) -> Vec<u8> {
        let (a, mut b) = tokio::io::duplex(4096);
        let d = Dispatched::default();
        if dispatched {
            d.mark();
        }
        let mut s = Shaped::new(a, d);
        for w in writes {
            s.write_all(w).await.unwrap();
        }
        s.shutdown().await.unwrap();
        drop(s);
        let mut out = Vec::new();
        b.read_to_end(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn only_an_undispatched_connection_is_reshaped() {
        let hyper_400: &[u8] = b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n";
        let shaped = written(false, &[hyper_400, b"trailing"]).await;
        assert_eq!(shaped, replacement(hyper_400).unwrap());
        // After a dispatched request, or for any other answer, bytes pass untouched.
        assert_eq!(written(true, &[hyper_400]).await, hyper_400);
        let ok: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n";
        assert_eq!(written(false, &[ok, b"hi"]).await, [ok, b"hi"].concat());
    }
}
