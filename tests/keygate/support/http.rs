//! A small HTTP/1.1 client for the tests: exact control over what is sent (duplicate headers,
//! odd bytes, bodies), and connections that stay open between requests.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Asserts the documented rejection: status, JSON content type and `{"error":"CODE"}`.
    pub fn assert_rejected(&self, status: u16, code: &str) {
        assert_eq!(self.status, status, "body: {}", self.text());
        assert_eq!(self.header("content-type"), Some("application/json"));
        assert_eq!(self.text(), format!(r#"{{"error":"{code}"}}"#));
    }

    /// `Retry-After` as whole seconds; panics when absent or not a number.
    pub fn retry_after(&self) -> u64 {
        self.header("retry-after").expect("Retry-After").parse().expect("whole seconds")
    }
}

/// One connection, kept open across requests.
pub struct Connection {
    reader: BufReader<TcpStream>,
}

impl Connection {
    pub fn open(addr: SocketAddr) -> std::io::Result<Connection> {
        Connection::wrap(TcpStream::connect(addr)?)
    }

    /// A connection from the loopback address `source` (any of 127.0.0.0/8), to play a client
    /// at another address.
    pub fn open_from(source: &str, addr: SocketAddr) -> std::io::Result<Connection> {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
        let source: SocketAddr = format!("{source}:0").parse().expect("an IPv4 source");
        socket.bind(&source.into())?;
        socket.connect(&addr.into())?;
        Connection::wrap(socket.into())
    }

    fn wrap(stream: TcpStream) -> std::io::Result<Connection> {
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        stream.set_nodelay(true)?;
        Ok(Connection { reader: BufReader::new(stream) })
    }

    pub fn send_raw(&mut self, bytes: &[u8]) -> std::io::Result<Response> {
        self.reader.get_mut().write_all(bytes)?;
        self.read_response()
    }

    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> std::io::Result<Response> {
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: test\r\n");
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        if !body.is_empty() || method == "POST" {
            head.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        head.push_str("\r\n");
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(body);
        self.send_raw(&bytes)
    }

    /// The raw stream, to send a request in pieces.
    pub fn stream(&mut self) -> &mut TcpStream {
        self.reader.get_mut()
    }

    pub fn read_response(&mut self) -> std::io::Result<Response> {
        let mut status_line = String::new();
        if self.reader.read_line(&mut status_line)? == 0 {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "connection closed"));
        }
        let status = status_line.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        let mut headers = Vec::new();
        loop {
            let mut line = String::new();
            self.reader.read_line(&mut line)?;
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((n, v)) = line.split_once(':') {
                headers.push((n.trim().to_string(), v.trim().to_string()));
            }
        }
        let value = |name: &str| {
            headers
                .iter()
                .find(|(n, _): &&(String, String)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.clone())
        };
        let mut body = Vec::new();
        if value("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
            loop {
                let mut size = String::new();
                self.reader.read_line(&mut size)?;
                let size = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
                let mut chunk = vec![0; size + 2];
                self.reader.read_exact(&mut chunk)?;
                if size == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..size]);
            }
        } else if let Some(length) = value("content-length").and_then(|v| v.parse::<usize>().ok()) {
            body.resize(length, 0);
            self.reader.read_exact(&mut body)?;
        }
        Ok(Response { status, headers, body })
    }

    /// Whether the server closed the connection (a read finds end of stream).
    pub fn is_closed(&mut self) -> bool {
        let stream = self.reader.get_mut();
        stream.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        let mut byte = [0u8; 1];
        let closed = matches!(stream.read(&mut byte), Ok(0));
        stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        closed
    }
}

/// One request on a fresh connection.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Response> {
    Connection::open(addr)?.request(method, path, headers, body)
}

pub fn get(addr: SocketAddr, path: &str) -> std::io::Result<Response> {
    request(addr, "GET", path, &[], b"")
}

/// A minimal peer on `listener`, each connection on a thread of its own: reads one request's
/// line and headers, then answers `status(request line)` ("200 OK", say) with a two-byte body
/// and closes the connection.
pub fn serve_each(listener: TcpListener, status: impl Fn(&str) -> &'static str + Send + Sync + 'static) {
    let status = std::sync::Arc::new(status);
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let status = std::sync::Arc::clone(&status);
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream);
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 {
                    return;
                }
                let mut header = String::new();
                while reader.read_line(&mut header).unwrap_or(0) > 2 {
                    header.clear();
                }
                let answer =
                    format!("HTTP/1.1 {}\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok", status(&line));
                let _ = reader.get_mut().write_all(answer.as_bytes());
            });
        }
    });
}
