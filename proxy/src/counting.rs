//! A stream wrapper that counts the bytes read from it, so that relays report live byte counts.

use std::{
    io,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A stream that adds the number of bytes read from it to a shared counter.
#[derive(Debug)]
pub struct CountingStream<S> {
    inner: S,
    read: Arc<AtomicU64>,
}

impl<S> CountingStream<S> {
    /// Wraps `inner`; every byte read from it is added to `read`.
    pub fn new(inner: S, read: Arc<AtomicU64>) -> Self {
        Self { inner, read }
    }

    /// Returns the wrapped stream.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for CountingStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let poll = Pin::new(&mut self.inner).poll_read(cx, buf);
        let added = buf.filled().len() - before;
        if added > 0 {
            self.read.fetch_add(added as u64, Ordering::Relaxed);
        }
        poll
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for CountingStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    #[tokio::test]
    async fn counts_bytes_read() {
        let (client, mut server) = tokio::io::duplex(64);
        let counter = Arc::new(AtomicU64::new(0));
        let mut counted = CountingStream::new(client, Arc::clone(&counter));
        server.write_all(b"hello world").await.unwrap();
        drop(server);
        let mut text = String::new();
        counted.read_to_string(&mut text).await.unwrap();
        assert_eq!(text, "hello world");
        assert_eq!(counter.load(Ordering::Relaxed), 11);
    }
}
