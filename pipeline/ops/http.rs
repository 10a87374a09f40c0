//! A minimal HTTP/1.1 responder: one thread accepts connections and answers each on a
//! short-lived thread of its own, one request per connection (`Connection: close`, which
//! every scraper and `curl` handle). A thread per connection because a `pipe ctl swap`
//! waits for its marker to reach the stage, and scrapes must not queue behind it; at most
//! [`MAX_CONNECTIONS`] at once, so a flood of clients cannot start threads without end.
//! Requests are read with a timeout so that a client that connects and sends nothing
//! cannot hold a thread.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use super::Response;

/// How long a client may take to send its request line and headers.
const READ_TIMEOUT: Duration = Duration::from_secs(2);
/// Request heads larger than this are refused: the endpoints take no body.
const MAX_HEAD: usize = 16 * 1024;
/// Connections answered at once; more are refused with 503 until one ends.
pub const MAX_CONNECTIONS: usize = 16;

/// A running server; dropping it stops the thread.
pub struct Server {
    addr: Option<SocketAddr>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Server {
    /// Starts the accept thread; `handle` maps a request (method, path) to a response.
    pub fn start<F>(listener: TcpListener, handle: F) -> std::io::Result<Server>
    where
        F: Fn(&str, &str) -> Response + Send + Sync + 'static,
    {
        let handle = Arc::new(handle);
        let open = Arc::new(AtomicUsize::new(0));
        let addr = listener.local_addr().ok();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = std::thread::Builder::new()
            .name("ops-http".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    if stop2.load(Ordering::Relaxed) {
                        break;
                    }
                    // A failed connection concerns that client only.
                    let Ok(stream) = conn else { continue };
                    if open.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
                        open.fetch_sub(1, Ordering::SeqCst);
                        let _ = answer(stream, &|_: &str, _: &str| {
                            (503, "text/plain", "too many connections\n".to_string())
                        });
                        continue;
                    }
                    let (handle, open2) = (handle.clone(), open.clone());
                    let spawned =
                        std::thread::Builder::new()
                            .name("ops-conn".into())
                            .spawn(move || {
                                let _ = answer(stream, &*handle);
                                open2.fetch_sub(1, Ordering::SeqCst);
                            });
                    if spawned.is_err() {
                        open.fetch_sub(1, Ordering::SeqCst);
                    }
                }
            })?;
        Ok(Server {
            addr,
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // `accept` has no timeout: a connection of our own wakes it to see the flag.
        if let Some(addr) = self.addr {
            let _ = TcpStream::connect_timeout(&addr, Duration::from_millis(200));
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn answer<F: Fn(&str, &str) -> Response + ?Sized>(
    stream: TcpStream,
    handle: &F,
) -> std::io::Result<()> {
    stream.set_read_timeout(Some(READ_TIMEOUT))?;
    stream.set_write_timeout(Some(READ_TIMEOUT))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    // Skip the headers: nothing here depends on them.
    let mut head = line.len();
    loop {
        let mut h = String::new();
        let n = reader.read_line(&mut h)?;
        head += n;
        if n == 0 || h == "\r\n" || h == "\n" || head > MAX_HEAD {
            break;
        }
    }
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (status, ctype, body) = match method {
        _ if head > MAX_HEAD => (431, "text/plain", "request head too large\n".into()),
        "GET" | "HEAD" | "POST" => handle(method, path),
        _ => (405, "text/plain", "only GET and POST are served\n".into()),
    };
    let reason = match status {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "",
    };
    let mut out = stream;
    write!(
        out,
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    if method != "HEAD" {
        out.write_all(body.as_bytes())?;
    }
    out.flush()
}
