//! Where the server under test is: the test script exports these variables.
//!
//! * `METRICS_INGEST_TEST_DSN`: libpq-style connection string of a superuser on a
//!   dedicated test cluster (e.g. `host=127.0.0.1 port=54330 user=postgres dbname=postgres`);
//! * `METRICS_INGEST_TEST_PGDATA`: that cluster's data directory;
//! * `METRICS_INGEST_TEST_PGBIN`: the directory of pg_dump, pg_restore, psql, pg_ctl;
//! * `METRICS_INGEST_TEST_RUNAS`: the OS user the cluster runs as when the tests run as
//!   root (server binaries are then run through `runuser`), empty otherwise.
//!
//! Every test works in a database of its own ([`TestDb`]), created with the extension
//! and dropped at the end. Tests that disrupt the whole cluster (killing a backend
//! makes the postmaster restart every backend) take the cluster exclusively
//! ([`TestDb::exclusive`]); every other test holds it shared for its lifetime.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::str::FromStr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

pub use postgres::{Client, Config, NoTls};

pub const DSN_VAR: &str = "METRICS_INGEST_TEST_DSN";
pub const PGDATA_VAR: &str = "METRICS_INGEST_TEST_PGDATA";
pub const PGBIN_VAR: &str = "METRICS_INGEST_TEST_PGBIN";
pub const RUNAS_VAR: &str = "METRICS_INGEST_TEST_RUNAS";

/// How long to keep trying to connect while the server restarts or recovers.
pub const RECONNECT_TIMEOUT: Duration = Duration::from_secs(60);

fn env_nonempty(var: &str) -> Option<String> {
    std::env::var(var).ok().filter(|v| !v.trim().is_empty())
}

fn missing(var: &str) -> ! {
    panic!(
        "{var} is not set: these tests need the PostgreSQL test cluster that \
         scripts/test.sh starts; run them through scripts/test.sh"
    )
}

/// The superuser connection string of the test cluster. Panics (the test fails) when
/// the tests are not run through scripts/test.sh: they must never pass vacuously.
pub fn dsn() -> String {
    env_nonempty(DSN_VAR).unwrap_or_else(|| missing(DSN_VAR))
}

/// The test cluster's connection string, or None outside scripts/test.sh.
pub fn try_dsn() -> Option<String> {
    env_nonempty(DSN_VAR)
}

/// The directory holding pg_dump, pg_restore, psql and pg_ctl.
pub fn pgbin() -> PathBuf {
    PathBuf::from(env_nonempty(PGBIN_VAR).unwrap_or_else(|| missing(PGBIN_VAR)))
}

/// The test cluster's data directory.
pub fn pgdata() -> PathBuf {
    PathBuf::from(env_nonempty(PGDATA_VAR).unwrap_or_else(|| missing(PGDATA_VAR)))
}

/// The OS user server-side commands must run as, if not the current one.
pub fn runas() -> Option<String> {
    env_nonempty(RUNAS_VAR)
}

/// The parsed superuser connection settings (database as given in the DSN).
pub fn admin_config() -> Config {
    let dsn = dsn();
    let mut config = Config::from_str(&dsn)
        .unwrap_or_else(|e| panic!("{DSN_VAR}={dsn:?} is not a valid connection string: {e}"));
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(Duration::from_secs(10));
    }
    config
}

/// A superuser connection to the database named in the DSN.
pub fn admin() -> Client {
    connect_retry(&admin_config())
}

/// Connects, retrying for up to [`RECONNECT_TIMEOUT`] while the server refuses
/// connections (restarting after a crash, in recovery, shutting down).
pub fn connect_retry(config: &Config) -> Client {
    connect_within(config, RECONNECT_TIMEOUT)
        .unwrap_or_else(|e| panic!("could not connect to {}: {e}", describe(config)))
}

/// Connects, retrying until `timeout` has passed; the last error if it never succeeds.
pub fn connect_within(config: &Config, timeout: Duration) -> Result<Client, postgres::Error> {
    let deadline = Instant::now() + timeout;
    loop {
        match config.connect(NoTls) {
            Ok(client) => return Ok(client),
            Err(e) if Instant::now() < deadline && retryable_connect_error(&e) => {
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => return Err(e),
        }
    }
}

/// Errors a connection attempt can hit while the server restarts: refused or reset
/// sockets (no db error) and 57P03 (starting up, in recovery, shutting down).
fn retryable_connect_error(e: &postgres::Error) -> bool {
    match e.code() {
        None => true,
        Some(code) => matches!(code.code(), "57P03" | "57P01" | "57P02" | "08006"),
    }
}

fn describe(config: &Config) -> String {
    format!(
        "host={} port={} user={} dbname={}",
        hosts_text(config),
        config.get_ports().first().copied().unwrap_or(5432),
        config.get_user().unwrap_or(""),
        config.get_dbname().unwrap_or("")
    )
}

fn hosts_text(config: &Config) -> String {
    config
        .get_hosts()
        .iter()
        .map(|h| match h {
            postgres::config::Host::Tcp(name) => name.clone(),
            #[cfg(unix)]
            postgres::config::Host::Unix(path) => path.display().to_string(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// A libpq key=value connection string for `config` with another database and
/// possibly another user, for the command-line tools.
pub fn conninfo(config: &Config, dbname: &str, user: Option<&str>) -> String {
    let mut parts = Vec::new();
    let hosts = hosts_text(config);
    if !hosts.is_empty() {
        parts.push(format!("host={}", quote_conninfo(&hosts)));
    }
    if let Some(port) = config.get_ports().first() {
        parts.push(format!("port={port}"));
    }
    if let Some(user) = user.or(config.get_user()) {
        parts.push(format!("user={}", quote_conninfo(user)));
    }
    if let Some(password) = config.get_password() {
        parts.push(format!(
            "password={}",
            quote_conninfo(&String::from_utf8_lossy(password))
        ));
    }
    parts.push(format!("dbname={}", quote_conninfo(dbname)));
    parts.join(" ")
}

fn quote_conninfo(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}

// ---------------------------------------------------------------------------
// Sharing the cluster between the tests of one binary
// ---------------------------------------------------------------------------

static CLUSTER: RwLock<()> = RwLock::new(());

/// Held by every test for its lifetime: shared by ordinary tests, exclusive for tests
/// that restart or crash the cluster.
/// Never take it twice in one test (a second shared lock waits behind a waiting
/// exclusive one, which waits for the first: deadlock): a test's further databases
/// come from [`TestDb::beside`], which relies on the first one's guard.
pub enum ClusterGuard {
    Shared(#[allow(dead_code)] RwLockReadGuard<'static, ()>),
    Exclusive(#[allow(dead_code)] RwLockWriteGuard<'static, ()>),
    /// Held through another [`TestDb`] of the same test.
    HeldElsewhere,
}

/// Share the cluster with the other ordinary tests.
pub fn shared_cluster() -> ClusterGuard {
    ClusterGuard::Shared(CLUSTER.read().unwrap_or_else(|e| e.into_inner()))
}

/// Have the cluster alone: waits for every other test holding it to finish.
pub fn exclusive_cluster() -> ClusterGuard {
    ClusterGuard::Exclusive(CLUSTER.write().unwrap_or_else(|e| e.into_inner()))
}

// ---------------------------------------------------------------------------
// One database per test
// ---------------------------------------------------------------------------

static NEXT_DB: AtomicU32 = AtomicU32::new(1);

/// A name unique to this run of the test binary: `<prefix>_<label>_<pid>_<n>`, lower
/// case, at most 63 bytes. Roles are cluster-wide, so this serves for them too.
pub fn unique_name(prefix: &str, label: &str) -> String {
    let label: String = label
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .take(30)
        .collect();
    let n = NEXT_DB.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}_{label}_{}_{n}", std::process::id())
}

/// A fresh database with the extension created in it, dropped (with its connections
/// terminated) when this value goes out of scope, pass or fail.
pub struct TestDb {
    name: String,
    config: Config,
    _cluster: ClusterGuard,
}

impl TestDb {
    /// A fresh database for a test that shares the cluster with other tests.
    pub fn new(label: &str) -> TestDb {
        TestDb::with_guard(label, shared_cluster())
    }

    /// A fresh database for a test that must have the cluster to itself (it kills
    /// backends, restarts the server...). Other tests wait meanwhile.
    pub fn exclusive(label: &str) -> TestDb {
        TestDb::with_guard(label, exclusive_cluster())
    }

    /// A further fresh database for the same test, without the extension when
    /// `with_extension` is false (a restore target). `self` must outlive it: it
    /// holds the test's share of the cluster.
    pub fn beside(&self, label: &str, with_extension: bool) -> TestDb {
        TestDb::create(label, ClusterGuard::HeldElsewhere, with_extension)
    }

    fn with_guard(label: &str, guard: ClusterGuard) -> TestDb {
        TestDb::create(label, guard, true)
    }

    fn create(label: &str, guard: ClusterGuard, with_extension: bool) -> TestDb {
        let name = unique_name("mi_test", label);
        let mut admin = admin();
        // One statement per call: DROP/CREATE DATABASE cannot run in a transaction
        // block, which a multi-statement simple query is.
        for sql in [
            format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"),
            format!("CREATE DATABASE {name} TEMPLATE template0 ENCODING 'UTF8'"),
        ] {
            admin
                .batch_execute(&sql)
                .unwrap_or_else(|e| panic!("{sql}: {}", error_text(&e)));
        }
        let mut config = admin_config();
        config.dbname(&name);
        let db = TestDb {
            name,
            config,
            _cluster: guard,
        };
        if with_extension {
            db.connect()
                .batch_execute("CREATE EXTENSION metrics_ingest")
                .unwrap_or_else(|e| {
                    panic!(
                        "CREATE EXTENSION metrics_ingest in {}: {}",
                        db.name,
                        error_text(&e)
                    )
                });
        }
        db
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The superuser's connection settings for this database.
    pub fn config(&self) -> Config {
        self.config.clone()
    }

    /// The connection settings for this database as `role` (trust authentication).
    pub fn config_as(&self, role: &str) -> Config {
        let mut config = self.config.clone();
        config.user(role);
        config
    }

    /// A superuser connection to this database.
    pub fn connect(&self) -> Client {
        connect_retry(&self.config)
    }

    /// A connection to this database as `role`.
    pub fn connect_as(&self, role: &str) -> Client {
        connect_retry(&self.config_as(role))
    }

    /// A libpq connection string for this database (for psql, pg_dump, pg_restore).
    pub fn conninfo(&self) -> String {
        conninfo(&self.config, &self.name, None)
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        let deadline = Instant::now() + RECONNECT_TIMEOUT;
        loop {
            let result = connect_within(&admin_config(), Duration::from_secs(10))
                .and_then(|mut admin| admin.batch_execute(&sql));
            match result {
                Ok(()) => return,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(250));
                }
                Err(e) => {
                    eprintln!("warning: could not drop {}: {}", self.name, error_text(&e));
                    return;
                }
            }
        }
    }
}

/// A LOGIN role with a unique name, made for a test database; dropped when this value
/// goes out of scope, after `DROP OWNED BY` in that database (if it still exists)
/// removes its objects and privileges there, whichever of the two is dropped first.
pub struct TestRole {
    name: String,
    db_config: Config,
}

impl TestRole {
    /// `CREATE ROLE <unique> LOGIN <options>`, for use in `db`.
    pub fn new(db: &TestDb, label: &str, options: &str) -> TestRole {
        let name = unique_name("mi_role", label);
        admin()
            .batch_execute(&format!("CREATE ROLE {name} LOGIN {options}"))
            .unwrap_or_else(|e| panic!("CREATE ROLE {name}: {}", error_text(&e)));
        TestRole {
            name,
            db_config: db.config(),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for TestRole {
    fn drop(&mut self) {
        if let Ok(mut client) = connect_within(&self.db_config, RECONNECT_TIMEOUT) {
            if let Err(e) = client.batch_execute(&format!("DROP OWNED BY {}", self.name)) {
                eprintln!("warning: DROP OWNED BY {}: {}", self.name, error_text(&e));
            }
        }
        let sql = format!("DROP ROLE IF EXISTS {}", self.name);
        if let Err(e) = connect_within(&admin_config(), RECONNECT_TIMEOUT)
            .and_then(|mut admin| admin.batch_execute(&sql))
        {
            eprintln!(
                "warning: could not drop role {}: {}",
                self.name,
                error_text(&e)
            );
        }
    }
}

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

/// The SQLSTATE of an error, or "" when the error did not come from the server.
pub fn sqlstate(e: &postgres::Error) -> String {
    e.code().map(|c| c.code().to_string()).unwrap_or_default()
}

/// "SQLSTATE: message" for a server error, the error itself otherwise.
pub fn error_text(e: &postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => e.to_string(),
    }
}

/// The server error `result` must be, with the given SQLSTATE; its message.
#[track_caller]
pub fn expect_sqlstate<T: std::fmt::Debug>(
    result: Result<T, postgres::Error>,
    expected: &str,
    what: &str,
) -> String {
    match result {
        Ok(v) => panic!("{what}: expected SQLSTATE {expected}, but it succeeded: {v:?}"),
        Err(e) => {
            let got = sqlstate(&e);
            assert_eq!(
                got,
                expected,
                "{what}: expected SQLSTATE {expected}, got {}",
                error_text(&e)
            );
            e.as_db_error()
                .map(|d| d.message().to_string())
                .unwrap_or_default()
        }
    }
}

// ---------------------------------------------------------------------------
// Command-line tools and server-side commands
// ---------------------------------------------------------------------------

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// `program args...`, run as [`runas`] when that is set (through runuser as root,
/// else sudo), from `/` so that the other user need not read the current directory.
pub fn command_as_cluster_user(program: &Path) -> Command {
    let mut cmd = match runas() {
        Some(user) if is_root() => {
            let mut c = Command::new("runuser");
            c.args(["-u", &user, "--"]).arg(program);
            c
        }
        Some(user) => {
            let mut c = Command::new("sudo");
            c.args(["-n", "-u", &user, "--"]).arg(program);
            c
        }
        None => Command::new(program),
    };
    cmd.current_dir("/");
    cmd
}

/// A PostgreSQL program from [`pgbin`], to run as the cluster's user.
pub fn pg_command(tool: &str) -> Command {
    let path = pgbin().join(tool);
    assert!(
        path.exists(),
        "{} does not exist ({PGBIN_VAR} is wrong?)",
        path.display()
    );
    command_as_cluster_user(&path)
}

/// Runs `cmd` with `stdin` as its standard input; panics with its stderr unless it
/// exits with status 0.
pub fn run_checked(mut cmd: Command, stdin: Option<&[u8]>, what: &str) -> Output {
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: could not start {cmd:?}: {e}"));
    let writer = stdin.map(|bytes| {
        let mut pipe = child.stdin.take().expect("stdin is piped");
        let bytes = bytes.to_vec();
        std::thread::spawn(move || {
            use std::io::Write;
            // A tool that exits early closes the pipe; its exit status tells why.
            let _ = pipe.write_all(&bytes);
        })
    });
    let output = child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("{what}: waiting for {cmd:?}: {e}"));
    if let Some(w) = writer {
        let _ = w.join();
    }
    assert!(
        output.status.success(),
        "{what} failed ({}): {cmd:?}\n--- stderr ---\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// `pg_dump <args> -d <db>`; its standard output (use `-Fc` for a custom-format dump).
pub fn pg_dump(db: &TestDb, args: &[&str]) -> Vec<u8> {
    let mut cmd = pg_command("pg_dump");
    cmd.args(args).arg("-d").arg(db.conninfo());
    run_checked(cmd, None, "pg_dump").stdout
}

/// `pg_restore <args> -d <db>` reading the archive from standard input; its stderr
/// (warnings), which must be empty unless the caller decides otherwise.
pub fn pg_restore(db: &TestDb, archive: &[u8], args: &[&str]) -> String {
    let mut cmd = pg_command("pg_restore");
    cmd.args(args).arg("-d").arg(db.conninfo());
    let output = run_checked(cmd, Some(archive), "pg_restore");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// `psql -X -v ON_ERROR_STOP=1 -At <args> -d <db>` with `input` as the script; stdout.
pub fn psql(db: &TestDb, args: &[&str], input: &str) -> String {
    let mut cmd = pg_command("psql");
    cmd.args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-At"])
        .args(args)
        .arg("-d")
        .arg(db.conninfo());
    let output = run_checked(cmd, Some(input.as_bytes()), "psql");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Sends `signal` (e.g. "KILL") to a server process, as the cluster's user when
/// that is another user and we are not root.
pub fn signal_server_process(pid: i32, signal: &str) {
    let mut cmd = if runas().is_some() && !is_root() {
        let mut c = Command::new("sudo");
        c.args(["-n", "-u", &runas().unwrap(), "--", "kill"]);
        c
    } else {
        Command::new("kill")
    };
    cmd.arg(format!("-{signal}")).arg(pid.to_string());
    cmd.current_dir("/");
    run_checked(cmd, None, &format!("kill -{signal} {pid}"));
}

/// When the postmaster started, as text. It changes when the server is restarted, but
/// not when the postmaster reinitializes after a backend crash: to detect that, keep a
/// session open and see whether it survived.
pub fn postmaster_start_time(client: &mut Client) -> String {
    client
        .query_one("SELECT pg_catalog.pg_postmaster_start_time()::text", &[])
        .expect("pg_postmaster_start_time()")
        .get(0)
}
