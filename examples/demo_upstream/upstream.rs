//! A tiny ingestion node: the upstream of `make demo`, and the real upstream the tests forward
//! to. It speaks just enough HTTP/1.1 (keep-alive, `Content-Length` and chunked bodies),
//! records every request it receives, and answers `200 {"app":…,"bytes":…}`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

/// One request as the upstream saw it.
#[derive(Debug, Clone)]
pub struct Received {
    /// The request target: path and query.
    pub target: String,
    /// Header names lowercased, in the order received.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Received {
    /// Every value of header `name` (case-insensitive).
    pub fn header_values(&self, name: &str) -> Vec<&str> {
        let name = name.to_ascii_lowercase();
        self.headers.iter().filter(|(n, _)| *n == name).map(|(_, v)| v.as_str()).collect()
    }
}

/// The requests received so far, shared with whoever started the upstream.
pub type Journal = Arc<Mutex<Vec<Received>>>;

/// A running upstream.
pub struct DemoUpstream {
    pub addr: SocketAddr,
    pub journal: Journal,
    alive: Arc<AtomicBool>,
    stopped: Arc<Notify>,
}

impl DemoUpstream {
    /// Starts an upstream on `addr` in a thread of its own.
    pub fn spawn(addr: &str) -> std::io::Result<DemoUpstream> {
        let std_listener = std::net::TcpListener::bind(addr)?;
        std_listener.set_nonblocking(true)?;
        let upstream = DemoUpstream {
            addr: std_listener.local_addr()?,
            journal: Journal::default(),
            alive: Arc::new(AtomicBool::new(true)),
            stopped: Arc::new(Notify::new()),
        };
        let (journal, alive, stopped) =
            (Arc::clone(&upstream.journal), Arc::clone(&upstream.alive), Arc::clone(&upstream.stopped));
        std::thread::Builder::new().name("demo-upstream".into()).spawn(move || {
            let runtime =
                tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
            runtime.block_on(async move {
                let listener = TcpListener::from_std(std_listener).expect("listener");
                tokio::select! {
                    _ = serve(listener, journal, alive) => {}
                    _ = stopped.notified() => {}
                }
            });
        })?;
        Ok(upstream)
    }

    /// Dies like a crashed node: stops listening, and cuts every connection at its next
    /// request without recording or answering it.
    pub fn kill(&self) {
        self.alive.store(false, Ordering::SeqCst);
        self.stopped.notify_one();
    }
}

/// Accepts connections on `listener`, recording into `journal` while `alive`.
async fn serve(listener: TcpListener, journal: Journal, alive: Arc<AtomicBool>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let (journal, alive) = (Arc::clone(&journal), Arc::clone(&alive));
        tokio::spawn(async move {
            let _ = connection(stream, journal, alive).await;
        });
    }
}

async fn connection(stream: TcpStream, journal: Journal, alive: Arc<AtomicBool>) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).await? == 0 {
            return Ok(());
        }
        let target = line.split_whitespace().nth(1).unwrap_or("").to_string();
        let mut headers = Vec::new();
        loop {
            let mut header = String::new();
            reader.read_line(&mut header).await?;
            let header = header.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
            }
        }
        let value = |name: &str| headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone());
        let body = if value("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
            read_chunked(&mut reader).await?
        } else {
            let length = value("content-length").and_then(|v| v.parse::<usize>().ok()).unwrap_or(0);
            let mut body = vec![0; length];
            reader.read_exact(&mut body).await?;
            body
        };
        let app = value("x-keygate-app").unwrap_or_default().replace(['"', '\\'], "");
        let reply = format!(r#"{{"app":"{app}","bytes":{}}}"#, body.len());
        let close = value("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
        if !alive.load(Ordering::SeqCst) {
            return Ok(()); // dead: the request is neither recorded nor answered
        }
        journal.lock().unwrap_or_else(|e| e.into_inner()).push(Received { target, headers, body });
        let response = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{reply}",
            reply.len()
        );
        write.write_all(response.as_bytes()).await?;
        if close {
            return Ok(());
        }
    }
}

async fn read_chunked<R: AsyncBufReadExt + Unpin>(reader: &mut R) -> std::io::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let mut size_line = String::new();
        reader.read_line(&mut size_line).await?;
        let size = usize::from_str_radix(size_line.trim().split(';').next().unwrap_or("0"), 16)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        let mut chunk = vec![0; size + 2];
        if size == 0 {
            // The last chunk: skip trailers up to the empty line.
            loop {
                let mut trailer = String::new();
                reader.read_line(&mut trailer).await?;
                if trailer.trim().is_empty() {
                    return Ok(body);
                }
            }
        }
        reader.read_exact(&mut chunk).await?;
        body.extend_from_slice(&chunk[..size]);
    }
}
