//! The native ceiling of the network benchmarks: the servers of bench_net.py's Protocol rows,
//! written directly on mio (one thread, edge-triggered epoll), driven by the same C client.
//!
//!     native_echo echo CONNS   echo every byte back
//!     native_echo send CONNS   read an 8-byte little-endian count, send that many bytes
//!     native_echo recv CONNS   discard everything; on EOF send one byte and close
//!
//! Listens on 127.0.0.1 on a free port and prints the port. Like bench_net.py's Meter, it
//! counts connections: the client's warm-up uses CONNS of them, the timed phase the next
//! CONNS; CPU time (getrusage, user + system) runs from the open of connection CONNS + 1 to
//! the close of connection 2 * CONNS. Then it prints "CPU_SECONDS PEAK_RSS_KIB" and exits.
//! An alarm ends it after 110 s whatever happens.

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use std::io::{self, ErrorKind, Read, Write};
use std::os::fd::AsRawFd;

const LISTENER: Token = Token(usize::MAX);
const BUF: usize = 256 * 1024;

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Echo,
    Send,
    Recv,
}

struct Conn {
    stream: TcpStream,
    pending: Vec<u8>, // echo: read but not yet written back
    header: Vec<u8>,  // send: the count, as far as it has arrived
    to_send: u64,     // send: bytes still to write
}

fn usage() -> ! {
    eprintln!("usage: native_echo echo|send|recv CONNS");
    std::process::exit(2);
}

fn cpu_seconds() -> f64 {
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(u.ru_utime) + secs(u.ru_stime)
}

/// Peak RSS in KiB. Not ru_maxrss: after exec, Linux keeps the larger of the exec'ing
/// process's peak (here the Python benchmark's) and this one's.
fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let line = status.lines().find(|l| l.starts_with("VmHWM:"));
    let kib = line.and_then(|l| l.split_whitespace().nth(1)?.parse().ok());
    kib.unwrap_or(0)
}

/// 1000 concurrent connections need more fds than a default soft limit of 1024.
fn raise_fd_limit() {
    let mut limit: libc::rlimit = unsafe { std::mem::zeroed() };
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

fn would_block(err: &io::Error) -> bool {
    err.kind() == ErrorKind::WouldBlock
}

/// Write what the socket takes; Ok(false) when it would block.
fn write_some(stream: &mut TcpStream, data: &[u8], written: &mut usize) -> io::Result<bool> {
    match stream.write(data) {
        Ok(n) => {
            *written = n;
            Ok(true)
        }
        Err(e) if would_block(&e) => Ok(false),
        Err(e) if e.kind() == ErrorKind::Interrupted => Ok(true),
        Err(e) => Err(e),
    }
}

/// Do all the work the socket allows now; Ok(false) once the peer has closed.
fn service(conn: &mut Conn, mode: Mode, buf: &mut [u8]) -> io::Result<bool> {
    loop {
        let mut n = 0;
        if !conn.pending.is_empty() {
            if !write_some(&mut conn.stream, &conn.pending, &mut n)? {
                return Ok(true); // the writable event resumes here
            }
            conn.pending.drain(..n);
            continue;
        }
        if conn.to_send > 0 {
            let len = conn.to_send.min(BUF as u64) as usize;
            if !write_some(&mut conn.stream, &buf[..len], &mut n)? {
                return Ok(true);
            }
            conn.to_send -= n as u64;
            continue;
        }
        let got = match conn.stream.read(buf) {
            Ok(0) => {
                if mode == Mode::Recv {
                    let _ = conn.stream.write(b"."); // the end of the client's clock
                }
                return Ok(false);
            }
            Ok(got) => got,
            Err(e) if would_block(&e) => return Ok(true),
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        match mode {
            Mode::Echo => {
                if write_some(&mut conn.stream, &buf[..got], &mut n)? {
                    conn.pending.extend_from_slice(&buf[n..got]);
                } else {
                    conn.pending.extend_from_slice(&buf[..got]);
                }
            }
            Mode::Send => {
                let take = (8 - conn.header.len()).min(got);
                conn.header.extend_from_slice(&buf[..take]);
                if take > 0 && conn.header.len() == 8 {
                    conn.to_send = u64::from_le_bytes(conn.header[..8].try_into().unwrap());
                }
            }
            Mode::Recv => {}
        }
    }
}

fn main() -> io::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 3 {
        usage();
    }
    let mode = match args[1].as_str() {
        "echo" => Mode::Echo,
        "send" => Mode::Send,
        "recv" => Mode::Recv,
        _ => usage(),
    };
    let conns: usize = args[2].parse().unwrap_or_else(|_| usage());
    unsafe { libc::alarm(110) };
    raise_fd_limit();

    let mut poll = Poll::new()?;
    let mut listener = TcpListener::bind("127.0.0.1:0".parse().unwrap())?;
    // mio listens with a backlog of 128: 1000 clients connecting at once overflow it, and a
    // dropped SYN costs a second. Use bench_net.py's BACKLOG, as the Python servers do.
    if unsafe { libc::listen(listener.as_raw_fd(), 1024) } != 0 {
        return Err(io::Error::last_os_error());
    }
    poll.registry()
        .register(&mut listener, LISTENER, Interest::READABLE)?;
    println!("{}", listener.local_addr()?.port());
    io::stdout().flush()?;

    let mut slots: Vec<Option<Conn>> = Vec::new();
    let mut free: Vec<usize> = Vec::new();
    let (mut opens, mut closes) = (0, 0);
    let mut cpu_start = 0.0;
    let mut buf = vec![b'x'; BUF];
    let mut events = Events::with_capacity(1024);
    loop {
        if let Err(e) = poll.poll(&mut events, None) {
            if e.kind() == ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        for event in events.iter() {
            if event.token() == LISTENER {
                loop {
                    let mut stream = match listener.accept() {
                        Ok((stream, _)) => stream,
                        Err(e) if would_block(&e) => break,
                        Err(e) => return Err(e),
                    };
                    stream.set_nodelay(true)?;
                    opens += 1;
                    if opens == conns + 1 {
                        cpu_start = cpu_seconds();
                    }
                    let slot = free.pop().unwrap_or_else(|| {
                        slots.push(None);
                        slots.len() - 1
                    });
                    let interest = Interest::READABLE | Interest::WRITABLE;
                    poll.registry()
                        .register(&mut stream, Token(slot), interest)?;
                    let conn = Conn {
                        stream,
                        pending: Vec::new(),
                        header: Vec::new(),
                        to_send: 0,
                    };
                    slots[slot] = Some(conn);
                }
                continue;
            }
            let slot = event.token().0;
            let Some(conn) = slots[slot].as_mut() else {
                continue;
            };
            // A reset by the peer ends the connection like a close.
            if !service(conn, mode, &mut buf).unwrap_or(false) {
                let mut conn = slots[slot].take().unwrap();
                poll.registry().deregister(&mut conn.stream)?;
                free.push(slot);
                closes += 1;
                if closes == 2 * conns {
                    let cpu = cpu_seconds() - cpu_start;
                    println!("{cpu:.9} {}", peak_rss_kib());
                    return Ok(());
                }
            }
        }
    }
}
