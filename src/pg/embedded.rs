//! A private PostgreSQL cluster started from the server binaries installed on this machine.
//!
//! Used when no `DATABASE_URL` is given (and by the test harness). The cluster lives in a folder
//! of its own, listens on a free loopback port only (no Unix socket), and runs as an unprivileged
//! user when the gateway runs as root, because `initdb` and `postgres` refuse to run as root.
//!
//! [`Cluster::init`] trusts every loopback connection (the test harness's throwaway clusters);
//! [`Cluster::require_password`] sets the superuser's password and makes loopback connections
//! prove it (`scram-sha-256`), so that other local users cannot reach a local-mode cluster.
//!
//! The server runs in a process group of its own: a Ctrl-C in the terminal (which signals the
//! terminal's whole foreground group) reaches the gateway only, and the gateway stops the server
//! itself once it has written what it owes the database ([`Running::stop_within`]). Should the
//! gateway be killed outright, a watchdog stops the server ([`Running::guard`]); a server left
//! running all the same is stopped by the next start on the same folder
//! ([`Cluster::stop_leftover`]).

use std::fs;
use std::io::Write;
use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::{Pid, User};

/// Failures to find, create, start or stop the embedded cluster.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No `initdb`/`postgres` binaries were found.
    #[error(
        "no PostgreSQL server binaries found (looked in PATH, `pg_config --bindir` and \
         /usr/lib/postgresql/*/bin): install the PostgreSQL server package (Debian: \
         `apt-get install postgresql`) or set DATABASE_URL"
    )]
    NoBinaries,
    /// Running as root and no unprivileged user exists to own the cluster.
    #[error(
        "running as root needs an unprivileged `postgres` or `nobody` user to own the cluster"
    )]
    NoUser,
    /// The cluster's owner cannot reach the data folder.
    #[error(
        "the `{user}` user cannot reach {path}: choose a --data-dir that every user can enter \
         (each parent folder needs the x permission for others)"
    )]
    Unreachable {
        /// Owner of the cluster.
        user: String,
        /// Folder it cannot reach.
        path: PathBuf,
    },
    /// A server program failed.
    #[error("{program} failed: {detail}")]
    Program {
        /// Which program.
        program: &'static str,
        /// Its output, trimmed.
        detail: String,
    },
    /// The server did not accept connections in time.
    #[error("postgres did not start within {0:?}; its log: {1}")]
    StartTimeout(Duration, String),
    /// A file-system operation failed.
    #[error("embedded cluster i/o on {path}")]
    Io {
        /// File or folder concerned.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_owned(),
        source,
    }
}

/// Server settings for the cluster beyond its defaults.
#[derive(Debug, Clone, Default)]
pub struct Tuning {
    /// `-c name=value` pairs passed to `postgres`.
    pub settings: Vec<(String, String)>,
}

impl Tuning {
    /// Settings of the local-mode cluster: commit times recorded, so deliveries carry them.
    pub fn local() -> Tuning {
        Tuning {
            settings: vec![("track_commit_timestamp".to_owned(), "on".to_owned())],
        }
    }

    /// Settings for a throwaway test cluster: no durability, many connections, commit times,
    /// and prepared transactions (two-phase commit is tested).
    pub fn for_tests() -> Tuning {
        let pairs = [
            ("fsync", "off"),
            ("synchronous_commit", "off"),
            ("full_page_writes", "off"),
            ("max_connections", "500"),
            ("max_prepared_transactions", "10"),
            ("shared_buffers", "128MB"),
            ("track_commit_timestamp", "on"),
        ];
        Tuning {
            settings: pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        }
    }
}

/// A cluster folder and the binaries and user that serve it.
#[derive(Debug, Clone)]
pub struct Cluster {
    /// Cluster data folder (`PGDATA`).
    pgdata: PathBuf,
    /// Folder holding `initdb` and `postgres`.
    bin_dir: PathBuf,
    /// Owner to run the server as, when the gateway runs as root.
    owner: Option<User>,
    /// The superuser's password, once [`Cluster::require_password`] has set it.
    password: Option<String>,
}

/// A running cluster started by [`Cluster::start`].
#[derive(Debug)]
pub struct Running {
    /// Loopback port the server listens on.
    pub port: u16,
    /// Process id of the postmaster.
    pub pid: u32,
    /// The superuser's password, when the cluster requires one.
    password: Option<String>,
    child: Option<std::process::Child>,
    /// Stops the server should this process end without stopping it ([`Running::guard`]).
    watchdog: Option<std::process::Child>,
}

/// The watchdog's script: waits for end of file on its stdin, which comes when the gateway
/// closes it or ends, killed included; then gives server `$2` a fast shutdown if it still runs
/// folder `$1` (its pid file names it: a pid reused since, or written there by the cluster's
/// owner, is not signalled).
const WATCHDOG: &str = r#"read -r _line || :
pid=$(head -n 1 "$1/postmaster.pid" 2>/dev/null) && [ "$pid" = "$2" ] && kill -INT "$2" 2>/dev/null
exit 0"#;

impl Running {
    /// URL of database `db` as the superuser `postgres`, with its password when it has one.
    pub fn url(&self, db: &str) -> String {
        match &self.password {
            Some(password) => format!(
                "postgres://postgres:{password}@127.0.0.1:{}/{db}",
                self.port
            ),
            None => url(self.port, db),
        }
    }

    /// Stops the server (fast shutdown) and waits until it has exited.
    ///
    /// # Errors
    /// [`Error::Program`] when the server does not exit within 30 s.
    pub fn stop(self) -> Result<(), Error> {
        self.stop_within(Duration::from_secs(30))
    }

    /// Stops the server with a fast shutdown (its sessions are ended, what they committed is
    /// kept); when it has not exited after `patience`, with an immediate shutdown, given
    /// [`IMMEDIATE_PATIENCE`] more.
    ///
    /// # Errors
    /// [`Error::Program`] when the server outlives both.
    pub fn stop_within(mut self, patience: Duration) -> Result<(), Error> {
        if let Some(mut watchdog) = self.watchdog.take() {
            // Stopped here instead; the watchdog has nothing left to do. It may be gone already.
            let _killed = watchdog.kill();
            let _reaped = watchdog.wait();
        }
        if let Err(e) = stop_pid(self.pid, patience) {
            tracing::warn!(error = %e, "postgres ignored a fast shutdown; shutting it down at once");
            signal_and_wait(self.pid, Signal::SIGQUIT, IMMEDIATE_PATIENCE)?;
        }
        if let Some(mut child) = self.child.take() {
            // Reap our child; it has exited, so this returns at once.
            let _reaped = child.wait();
        }
        Ok(())
    }

    /// Leaves the server running after this handle is dropped (the test harness shares it).
    pub fn detach(mut self) -> (u16, u32) {
        self.child = None;
        if let Some(mut watchdog) = self.watchdog.take() {
            let _killed = watchdog.kill();
            let _reaped = watchdog.wait();
        }
        (self.port, self.pid)
    }

    /// Ties the server to this process: a small watchdog process (`sh`, in a process group of
    /// its own) holds a pipe from this process and gives the server a fast shutdown when the
    /// pipe closes, which happens when this process ends, even killed outright (SIGKILL).
    /// [`Running::stop_within`] stops the watchdog first.
    ///
    /// # Errors
    /// [`Error::Io`] when `sh` cannot be started.
    pub fn guard(&mut self, pgdata: &Path) -> Result<(), Error> {
        let watchdog = Command::new("/bin/sh")
            .args(["-c", WATCHDOG, "realtime-gateway-watchdog"])
            .arg(pgdata)
            .arg(self.pid.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .map_err(io(Path::new("/bin/sh")))?;
        self.watchdog = Some(watchdog);
        Ok(())
    }
}

/// URL of database `db` on a loopback cluster at `port`.
pub fn url(port: u16, db: &str) -> String {
    format!("postgres://postgres@127.0.0.1:{port}/{db}")
}

impl Cluster {
    /// Describes the cluster at `pgdata`, finding binaries and the user to run as.
    ///
    /// # Errors
    /// [`Error::NoBinaries`], [`Error::NoUser`], or [`Error::Unreachable`] when the owner could
    /// not enter the folder.
    pub fn new(pgdata: &Path) -> Result<Cluster, Error> {
        let bin_dir = find_bin_dir().ok_or(Error::NoBinaries)?;
        let owner = if nix::unistd::geteuid().is_root() {
            let user = ["postgres", "nobody"]
                .iter()
                .find_map(|name| User::from_name(name).ok().flatten())
                .ok_or(Error::NoUser)?;
            Some(user)
        } else {
            None
        };
        let pgdata = absolute(pgdata)?;
        if let Some(user) = &owner {
            check_reachable(&pgdata, user)?;
        }
        Ok(Cluster {
            pgdata,
            bin_dir,
            owner,
            password: None,
        })
    }

    /// The cluster's data folder.
    pub fn pgdata(&self) -> &Path {
        &self.pgdata
    }

    /// Whether `initdb` has run here.
    pub fn is_initialized(&self) -> bool {
        self.pgdata.join("PG_VERSION").is_file()
    }

    /// Runs `initdb` unless the cluster exists: superuser `postgres`, trust on loopback only,
    /// UTF-8, C collation.
    ///
    /// # Errors
    /// [`Error::Io`] or [`Error::Program`] when `initdb` fails.
    pub fn init(&self) -> Result<(), Error> {
        if self.is_initialized() {
            return Ok(());
        }
        fs::create_dir_all(&self.pgdata).map_err(io(&self.pgdata))?;
        fs::set_permissions(&self.pgdata, fs::Permissions::from_mode(0o700))
            .map_err(io(&self.pgdata))?;
        if let Some(user) = &self.owner {
            nix::unistd::chown(&self.pgdata, Some(user.uid), Some(user.gid)).map_err(|e| {
                Error::Io {
                    path: self.pgdata.clone(),
                    source: e.into(),
                }
            })?;
        }
        let output = self
            .command("initdb")
            .arg("-D")
            .arg(&self.pgdata)
            .args(["-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C"])
            .arg("--no-instructions")
            .stdin(Stdio::null())
            .output()
            .map_err(io(&self.bin_dir))?;
        if !output.status.success() {
            return Err(Error::Program {
                program: "initdb",
                detail: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
            });
        }
        // Loopback TCP only, and nothing else may connect.
        let hba = self.pgdata.join("pg_hba.conf");
        fs::write(
            &hba,
            "# written by realtime-gateway: loopback only\n\
             host all all 127.0.0.1/32 trust\n\
             host all all ::1/128 trust\n",
        )
        .map_err(io(&hba))?;
        Ok(())
    }

    /// Sets the superuser's password to `password` and makes every loopback connection
    /// authenticate with it (`scram-sha-256`); servers started afterwards by this value report
    /// URLs that carry it. Run on every start, so that the cluster always agrees with the
    /// password the caller keeps, and an older cluster that trusted loopback is converted. The
    /// password must be URL-safe (the caller generates it as hex).
    ///
    /// # Errors
    /// [`Error::Program`] when the password cannot be set, [`Error::Io`] when `pg_hba.conf`
    /// cannot be written.
    pub fn require_password(&mut self, password: &str) -> Result<(), Error> {
        if password.is_empty()
            || !password
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(Error::Program {
                program: "postgres",
                detail: "the cluster password must be non-empty and URL-safe".to_owned(),
            });
        }
        self.stop_leftover()?;
        // Single-user mode: no server listens meanwhile, and it needs no authentication.
        let mut child = self
            .command("postgres")
            .arg("--single")
            .arg("-D")
            .arg(&self.pgdata)
            .args(["-c", "password_encryption=scram-sha-256"])
            .args(["-c", "unix_socket_directories="])
            .arg("postgres")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(io(&self.bin_dir))?;
        if let Some(mut stdin) = child.stdin.take() {
            writeln!(stdin, "alter role postgres password '{password}';")
                .map_err(io(&self.pgdata))?;
        }
        let output = child.wait_with_output().map_err(io(&self.pgdata))?;
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        if !output.status.success() || said.contains("ERROR") || said.contains("FATAL") {
            return Err(Error::Program {
                program: "postgres --single",
                detail: said.trim().to_owned(),
            });
        }
        let hba = self.pgdata.join("pg_hba.conf");
        fs::write(
            &hba,
            "# written by realtime-gateway: loopback only, with the superuser's password\n\
             host all all 127.0.0.1/32 scram-sha-256\n\
             host all all ::1/128 scram-sha-256\n",
        )
        .map_err(io(&hba))?;
        self.password = Some(password.to_owned());
        Ok(())
    }

    /// Stops a server left running on this folder by a previous run (for example after the
    /// gateway was killed), so that [`start`](Self::start) can start it afresh.
    ///
    /// # Errors
    /// [`Error::Program`] when that server does not stop.
    pub fn stop_leftover(&self) -> Result<(), Error> {
        let pidfile = self.pgdata.join("postmaster.pid");
        let Ok(text) = fs::read_to_string(&pidfile) else {
            return Ok(());
        };
        let Some(pid) = text
            .lines()
            .next()
            .and_then(|l| l.trim().parse::<u32>().ok())
        else {
            return Ok(());
        };
        if is_postgres_of(pid, &self.pgdata) {
            tracing::info!(pid, "stopping postgres left by a previous run");
            stop_pid(pid, Duration::from_secs(30))?;
        }
        Ok(())
    }

    /// Starts the server on a free loopback port and waits until it accepts connections.
    /// The server's log goes to `server.log` in the data folder.
    ///
    /// # Errors
    /// [`Error::Program`] when `postgres` exits, [`Error::StartTimeout`] when it is not ready in
    /// time.
    pub fn start(&self, tuning: &Tuning) -> Result<Running, Error> {
        self.start_on(None, tuning)
    }

    /// Like [`start`](Self::start), on `port` when given (to come back where clients expect it
    /// after a stop), else on a free port.
    ///
    /// # Errors
    /// As [`start`](Self::start).
    pub fn start_on(&self, port: Option<u16>, tuning: &Tuning) -> Result<Running, Error> {
        self.stop_leftover()?;
        let log_path = self.pgdata.join("server.log");
        let mut last_log = String::new();
        // A free port can be taken by someone else between our probe and the server's bind:
        // try a few ports.
        for _attempt in 0..5 {
            let port = match port {
                Some(p) => p,
                None => free_port().map_err(io(&self.pgdata))?,
            };
            let log = fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log_path)
                .map_err(io(&log_path))?;
            if let Some(user) = &self.owner {
                // Ownership is best effort: the server only appends through our handle.
                let _ignored = nix::unistd::chown(&log_path, Some(user.uid), Some(user.gid));
            }
            let log_len = log.metadata().map(|m| m.len()).unwrap_or(0);
            let mut cmd = self.command("postgres");
            cmd.arg("-D")
                .arg(&self.pgdata)
                .args(["-p", &port.to_string()])
                .args(["-c", "listen_addresses=127.0.0.1"])
                .args(["-c", "unix_socket_directories="]);
            for (k, v) in &tuning.settings {
                cmd.arg("-c").arg(format!("{k}={v}"));
            }
            // A group of its own: the terminal's Ctrl-C goes to the gateway, which stops the
            // server last, after its own writes.
            cmd.process_group(0);
            let stderr = log.try_clone().map_err(io(&log_path))?;
            let mut child = cmd
                .stdin(Stdio::null())
                .stdout(Stdio::from(log))
                .stderr(Stdio::from(stderr))
                .spawn()
                .map_err(io(&self.bin_dir))?;
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                if let Ok(Some(_status)) = child.try_wait() {
                    last_log = log_tail(&log_path, log_len);
                    break;
                }
                if accepts_connections(port) {
                    return Ok(Running {
                        port,
                        pid: child.id(),
                        password: self.password.clone(),
                        child: Some(child),
                        watchdog: None,
                    });
                }
                if Instant::now() > deadline {
                    let _killed = child.kill();
                    return Err(Error::StartTimeout(
                        Duration::from_secs(60),
                        log_tail(&log_path, log_len),
                    ));
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            if !last_log.contains("could not bind") && !last_log.contains("in use") {
                break;
            }
        }
        Err(Error::Program {
            program: "postgres",
            detail: last_log,
        })
    }

    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(self.bin_dir.join(program));
        cmd.env("LC_ALL", "C").env_remove("PGDATA");
        if let Some(user) = &self.owner {
            // std drops the supplementary groups when a root parent sets the uid.
            cmd.uid(user.uid.as_raw()).gid(user.gid.as_raw());
            cmd.current_dir(&self.pgdata);
            cmd.env("HOME", &self.pgdata).env("USER", &user.name);
        }
        cmd
    }
}

/// Whether a PostgreSQL server on loopback `port` accepts a session: it answers our startup
/// packet with an authentication message rather than "starting up" or nothing.
pub fn accepts_connections(port: u16) -> bool {
    use std::io::Read;
    let Ok(mut stream) = std::net::TcpStream::connect_timeout(
        &(Ipv4Addr::LOCALHOST, port).into(),
        Duration::from_millis(200),
    ) else {
        return false;
    };
    // Send a startup packet for user postgres, database postgres, and read the first reply:
    // 'R' (authentication) means ready; 'E' with "starting up" means not yet.
    let mut body = Vec::new();
    body.extend_from_slice(&196_608u32.to_be_bytes()); // protocol 3.0
    for part in ["user", "postgres", "database", "postgres"] {
        body.extend_from_slice(part.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut packet = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    packet.extend_from_slice(&body);
    let _timeout = stream.set_read_timeout(Some(Duration::from_millis(500)));
    if stream.write_all(&packet).is_err() {
        return false;
    }
    let mut tag = [0u8; 1];
    matches!(stream.read_exact(&mut tag), Ok(()) if tag[0] == b'R')
}

fn free_port() -> std::io::Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    Ok(listener.local_addr()?.port())
}

fn log_tail(path: &Path, from: u64) -> String {
    let text = fs::read(path).unwrap_or_default();
    let start = usize::try_from(from).unwrap_or(0).min(text.len());
    let tail = String::from_utf8_lossy(&text[start..]);
    let lines: Vec<&str> = tail.lines().rev().take(8).collect();
    lines.into_iter().rev().collect::<Vec<_>>().join(" | ")
}

/// How long an immediate shutdown (SIGQUIT) may take once a fast one was not enough.
pub const IMMEDIATE_PATIENCE: Duration = Duration::from_secs(5);

/// Sends SIGINT (fast shutdown) to `pid` and waits for it to exit.
///
/// # Errors
/// [`Error::Program`] when it is still alive after `timeout`.
pub fn stop_pid(pid: u32, timeout: Duration) -> Result<(), Error> {
    signal_and_wait(pid, Signal::SIGINT, timeout)
}

/// Sends `signal` to `pid` and waits up to `timeout` for it to exit.
fn signal_and_wait(pid: u32, signal: Signal, timeout: Duration) -> Result<(), Error> {
    let Ok(raw) = i32::try_from(pid) else {
        return Ok(());
    };
    let pid = Pid::from_raw(raw);
    if kill(pid, signal).is_err() {
        return Ok(()); // already gone
    }
    let deadline = Instant::now() + timeout;
    while kill(pid, None).is_ok() && !is_zombie(pid) {
        if Instant::now() > deadline {
            return Err(Error::Program {
                program: "postgres",
                detail: format!("server {pid} did not stop within {timeout:?}"),
            });
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

fn is_zombie(pid: Pid) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit(')')
                .next()
                .is_some_and(|r| r.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

fn is_postgres_of(pid: u32, pgdata: &Path) -> bool {
    let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    let is_postgres = args
        .first()
        .is_some_and(|a| a.ends_with(b"postgres") || a.ends_with(b"postmaster"));
    is_postgres
        && args
            .iter()
            .any(|a| Path::new(std::str::from_utf8(a).unwrap_or("")) == pgdata)
}

fn absolute(path: &Path) -> Result<PathBuf, Error> {
    if path.is_absolute() {
        return Ok(path.to_owned());
    }
    let cwd = std::env::current_dir().map_err(io(path))?;
    Ok(cwd.join(path))
}

/// Checks that `user` can enter every existing parent of `path`.
fn check_reachable(path: &Path, user: &User) -> Result<(), Error> {
    for ancestor in path.ancestors().skip(1) {
        let Ok(meta) = fs::metadata(ancestor) else {
            continue; // will be created by us
        };
        let mode = meta.mode();
        let ok = if meta.uid() == user.uid.as_raw() {
            mode & 0o100 != 0
        } else if meta.gid() == user.gid.as_raw() {
            mode & 0o010 != 0
        } else {
            mode & 0o001 != 0
        };
        if !ok {
            return Err(Error::Unreachable {
                user: user.name.clone(),
                path: ancestor.to_owned(),
            });
        }
    }
    Ok(())
}

/// Finds the folder holding `initdb` and `postgres`: PATH, `pg_config --bindir`, then the newest
/// `/usr/lib/postgresql/<version>/bin`.
pub fn find_bin_dir() -> Option<PathBuf> {
    let has_both = |dir: &Path| dir.join("initdb").is_file() && dir.join("postgres").is_file();
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            if has_both(&dir) {
                // Resolve symlinks so that `postgres` finds its share folder.
                let real = fs::canonicalize(dir.join("postgres")).ok();
                return Some(
                    real.and_then(|p| p.parent().map(Path::to_owned))
                        .unwrap_or(dir),
                );
            }
        }
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && has_both(&dir) {
            return Some(dir);
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let v = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            Some((v, e.path().join("bin")))
        })
        .filter(|(_, dir)| has_both(dir))
        .collect();
    versions.sort();
    versions.pop().map(|(_, dir)| dir)
}
