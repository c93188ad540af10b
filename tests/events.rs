//! Realistic event payloads.
//!
//! A deterministic generator of call-metric events (same seed, same events, on
//! every machine): thousands of users and sessions, the four built-in metric
//! types, ISO 8601 timestamps in UTC with `Z`, locations with non-ASCII letters
//! (São Paulo, Zürich, Kraków, 東京, ...) and a few with commas and quotes,
//! device ids, platforms, app versions, sentiment scores and a unique
//! `event_id` per event. Events come in realistic sessions (a few dozen events
//! over minutes, one device, platform, app version and location each; see
//! [`Generator`]), and a share carry the user's `name` and `email` as seed 003's
//! clients send them. A small share of events leave optional fields out (no
//! session, no device, no platform, no location, no sentiment score), so NULL
//! handling is exercised too.
//!
//! One [`Event`] renders as
//! * a JSON element for `metrics_ingest.ingest_json` ([`Event::write_json`]),
//! * a JSON object shaped like a `metrics` row, for `json_populate_recordset`
//!   ([`Event::write_row_json`]),
//! * a CSV line for `COPY ... (FORMAT csv)` ([`Event::write_csv`], columns
//!   [`COPY_COLUMNS`]),
//! * the parameters of a prepared `INSERT` ([`Event::insert_params`], statement
//!   from [`insert_sql`]) or `CALL metrics_ingest.insert_metric` ([`Event::call_params`]),
//! * a CSV line for seed 000's own table design ([`Event::write_seed000_csv`]).
//!
//! Every path stores the same row content: booleans are sent as the numbers 0
//! and 1 (so CSV and INSERT store 0/1 too), label-valued sentiment is sent as the
//! label to ingest_json / insert_metric and as its score plus `metric_label` to
//! the paths that write columns directly, numeric sentiment has a NULL
//! `metric_label`, and every number is a short decimal whose text and `f64`
//! denote the same double (PostgreSQL's `float8in`, Rust's parser and the
//! binary parameter all agree).

use std::fmt::Write as _;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use postgres::types::{ToSql, Type};

/// The `metrics` columns every loading path writes, in the order of
/// [`Event::write_csv`] and [`Event::insert_params`]. `attributes` holds the
/// event's platform, as ingest_json and insert_metric keep it (0.3.0 reads the
/// field for `sessions` and stores it there: metrics has no platform column).
pub const COPY_COLUMNS: &str = "\"timestamp\", user_id, session_id, metric_type, metric_value, \
     metric_label, device_id, app_version, location, sentiment_score, event_id, attributes";

/// The columns that define "the same row" when comparing what two paths stored.
pub const COMPARED_COLUMNS: &str = COPY_COLUMNS;

/// Columns of seed 000's table, in the order of [`Event::write_seed000_csv`].
pub const SEED000_COLUMNS: &str = "\"timestamp\", user_id, session_id, metric_type, metric_value, \
     device_id, app_version, location, sentiment_score";

/// A prepared single-row INSERT into `table` (which has the `metrics` columns);
/// parameter types are [`INSERT_TYPES`] (attributes sent as text).
pub fn insert_sql(table: &str) -> String {
    format!(
        "INSERT INTO {table} ({COPY_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12::jsonb)"
    )
}

pub const INSERT_TYPES: [Type; 12] = [
    Type::TIMESTAMPTZ,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::FLOAT8,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::FLOAT8,
    Type::TEXT,
    Type::TEXT,
];

/// `CALL insert_metric` with a number as metric_value (the float8 overload);
/// platform, name and email go in `attributes` (the 11th argument, sent as text).
pub const CALL_NUMBER_SQL: &str =
    "CALL metrics_ingest.insert_metric($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11::text::jsonb)";
pub const CALL_NUMBER_TYPES: [Type; 11] = [
    Type::TIMESTAMPTZ,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::FLOAT8,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::FLOAT8,
    Type::TEXT,
    Type::TEXT,
];
/// `CALL insert_metric` with a label as metric_value (the text overload).
pub const CALL_TEXT_SQL: &str = CALL_NUMBER_SQL;
pub const CALL_TEXT_TYPES: [Type; 11] = [
    Type::TIMESTAMPTZ,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::TEXT,
    Type::FLOAT8,
    Type::TEXT,
    Type::TEXT,
];

/// A small deterministic PRNG (SplitMix64): fast, well mixed, no dependency.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        mix64(self.0)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: i64, hi: i64) -> i64 {
        lo + self.below((hi - lo + 1) as u64) as i64
    }

    /// True with probability `percent` / 100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

/// SplitMix64's finalizer: a bijection on u64 (distinct inputs, distinct outputs).
pub fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A decimal number: `units / 10^scale`. Its text and its `f64` denote the same
/// double: both are the correctly rounded value of the same rational.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decimal {
    pub units: i64,
    pub scale: u8,
}

impl Decimal {
    pub fn new(units: i64, scale: u8) -> Decimal {
        assert!(scale <= 6);
        Decimal { units, scale }
    }

    pub fn int(units: i64) -> Decimal {
        Decimal { units, scale: 0 }
    }

    pub fn to_f64(self) -> f64 {
        // Both operands are exact doubles (|units| < 2^53, 10^scale <= 10^6), so
        // the quotient is correctly rounded, as float8in's strtod is.
        self.units as f64 / 10_i64.pow(u32::from(self.scale)) as f64
    }

    pub fn write(self, out: &mut String) {
        if self.scale == 0 {
            let _ = write!(out, "{}", self.units);
            return;
        }
        let pow = 10_i64.pow(u32::from(self.scale));
        let sign = if self.units < 0 { "-" } else { "" };
        let abs = self.units.unsigned_abs();
        let _ = write!(
            out,
            "{sign}{}.{:0width$}",
            abs / pow as u64,
            abs % pow as u64,
            width = usize::from(self.scale)
        );
    }

    pub fn text(self) -> String {
        let mut s = String::new();
        self.write(&mut s);
        s
    }
}

/// The value of one event as the client sends it.
#[derive(Debug, Clone, PartialEq)]
pub enum MetricValue {
    /// A number (booleans are the numbers 0 and 1).
    Number(Decimal),
    /// A label of voice_sentiment and the score the registry maps it to.
    Label { label: &'static str, score: Decimal },
}

impl MetricValue {
    /// What the `metric_value` column stores.
    pub fn stored(&self) -> Decimal {
        match self {
            MetricValue::Number(d) => *d,
            MetricValue::Label { score, .. } => *score,
        }
    }

    /// What the `metric_label` column stores.
    pub fn label(&self) -> Option<&'static str> {
        match self {
            MetricValue::Number(_) => None,
            MetricValue::Label { label, .. } => Some(label),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Microseconds since 1970-01-01 UTC (whole milliseconds).
    pub unix_us: i64,
    /// The same instant as ISO 8601 text in UTC, ending in `Z`.
    pub timestamp: String,
    pub user_id: String,
    pub session_id: Option<String>,
    pub metric_type: &'static str,
    pub value: MetricValue,
    pub device_id: Option<String>,
    pub app_version: Option<String>,
    /// The device's platform (a field of its own from 0.3.0, read for
    /// `sessions`; stored in `attributes`, as `{"platform": ...}`).
    pub platform: Option<&'static str>,
    pub location: Option<&'static str>,
    pub sentiment_score: Option<Decimal>,
    /// The user's `name` and `email`, sent with this event (seed 003's
    /// clients do); the same for every event of a user. Not a `metrics` column:
    /// ingest_json and insert_metric keep them in `metrics_ingest.users`.
    pub profile: Option<(String, String)>,
    pub event_id: String,
}

pub const METRIC_TYPES: [&str; 4] = [
    "talked_time",
    "microphone_used",
    "speaker_used",
    "voice_sentiment",
];

/// Non-ASCII letters in several scripts, plus a few that need quoting in CSV
/// (comma) or escaping in JSON and CSV (double quote, backslash).
pub const LOCATIONS: [&str; 32] = [
    "São Paulo",
    "Zürich",
    "Kraków",
    "東京",
    "München",
    "Montréal",
    "Reykjavík",
    "İstanbul",
    "Łódź",
    "Tromsø",
    "Ciudad de México",
    "Москва",
    "Αθήνα",
    "서울",
    "القاهرة",
    "मुंबई",
    "Besançon",
    "Düsseldorf",
    "Kraków, Stare Miasto",
    "Washington, D.C.",
    "Berlin",
    "London",
    "New York",
    "Lisboa",
    "Porto Alegre",
    "Curitiba",
    "Dublin",
    "Amsterdam",
    "Osaka 大阪",
    "Ōsaka",
    "Zone \"B\" \\ Dock 7",
    "Saint-Jean-d'Angély",
];

const APP_VERSIONS: [&str; 12] = [
    "1.2.3",
    "1.2.4",
    "1.3.0",
    "1.3.1",
    "2.0.0",
    "2.0.1",
    "2.1.0",
    "2.1.0-beta.2",
    "2.2.0",
    "2.2.1",
    "3.0.0-rc.1",
    "3.0.0",
];

/// Device kinds and the platform each one reports.
const DEVICE_KINDS: [(&str, &str); 8] = [
    ("ios-iPhone14,5", "iOS"),
    ("ios-iPhone15,2", "iOS"),
    ("ios-iPad13,4", "iPadOS"),
    ("android-Pixel7", "Android"),
    ("android-SM-S911B", "Android"),
    ("android-Moto-g84", "Android"),
    ("web-chrome", "Web"),
    ("desktop-macos", "macOS"),
];

/// Given names and family names of the users' profiles (seed 003 sends `name`
/// and `email`), non-ASCII letters included.
const GIVEN_NAMES: [&str; 16] = [
    "Ana", "João", "Zoë", "Łukasz", "Søren", "Aiko", "Hyun-woo", "Olumide", "Priya", "Chloé",
    "Mateo", "Ingrid", "Dmitri", "Fatima", "Liam", "Mei",
];
const FAMILY_NAMES: [&str; 16] = [
    "Silva",
    "Müller",
    "Kowalski",
    "O'Brien",
    "García",
    "Nakamura",
    "Kim",
    "Okafor",
    "Sharma",
    "Dubois",
    "Rossi",
    "Johansson",
    "Ivanova",
    "Haddad",
    "Nguyen",
    "Smith",
];
const EMAIL_DOMAINS: [&str; 4] = ["example.com", "example.org", "example.net", "mail.example"];

const SENTIMENT_LABELS: [(&str, i64); 3] = [("negative", -1), ("neutral", 0), ("positive", 1)];

/// 2024-08-01T00:00:00Z in milliseconds.
const START_UNIX_MS: i64 = 1_722_470_400_000;

/// Events per session: uniform in this range (a few dozen; 36 on average).
pub const SESSION_EVENTS: (i64, i64) = (12, 60);
/// Session length in milliseconds: uniform in 2 to 30 minutes.
pub const SESSION_MS: (i64, i64) = (120_000, 1_800_000);

#[derive(Debug, Clone)]
struct Device {
    id: String,
    platform: &'static str,
}

#[derive(Debug, Clone)]
struct User {
    id: String,
    /// One or two devices; each session uses one.
    devices: Vec<Device>,
    app_version: &'static str,
    /// Where the user usually is; a session elsewhere now and then.
    home: &'static str,
    name: String,
    email: String,
}

/// What every event of one session shares.
#[derive(Debug, Clone)]
struct Session {
    id: String,
    user: usize,
    device: usize,
    location: &'static str,
    /// Events of the session not yet emitted.
    remaining: u32,
}

/// Shape of the generated population.
#[derive(Debug, Clone, Copy)]
pub struct GeneratorConfig {
    pub users: usize,
    /// Events per day of event time, on average. Sessions start at random
    /// moments (one every 86,400,000 x 36 / events_per_day ms on average), each
    /// with [`SESSION_EVENTS`] events spread over [`SESSION_MS`]; the events of
    /// the sessions open at a moment interleave in time order.
    pub events_per_day: u64,
    /// Percent of events that carry the user's `name` and `email` (seed 003's
    /// clients send them with every event; others never do).
    pub profile_percent: u64,
}

impl Default for GeneratorConfig {
    fn default() -> Self {
        GeneratorConfig {
            users: 5_000,
            // ~48,000 events per hour of event time
            events_per_day: 1_152_000,
            profile_percent: 20,
        }
    }
}

/// An endless, deterministic stream of events in time order:
/// `Generator::new(seed).take(n)`.
///
/// Events come in sessions: a session belongs to one user (a tenth of the users
/// are heavy users who start half of all sessions, so some users have several
/// sessions a day), lasts 2 to 30 minutes and has 12 to 60 events spread over
/// it, all with one device (and its platform), app version and location. A
/// small share of events leave optional fields out (no session, no device, no
/// platform, no app version, no location, no sentiment score).
#[derive(Debug, Clone)]
pub struct Generator {
    rng: Rng,
    id_key: u64,
    users: Vec<User>,
    heavy_users: Vec<usize>,
    profile_percent: u64,
    /// Open sessions by their number.
    sessions: std::collections::HashMap<u64, Session>,
    /// Pending events of the open sessions: (unix ms, session number, event number).
    pending: std::collections::BinaryHeap<std::cmp::Reverse<(i64, u64, u32)>>,
    sessions_started: u64,
    /// When the next session starts (ms, fractional).
    next_start_ms: f64,
    /// Mean time between session starts (ms).
    start_gap_ms: f64,
    index: u64,
}

impl Generator {
    pub fn new(seed: u64) -> Generator {
        Generator::with_config(seed, GeneratorConfig::default())
    }

    pub fn with_config(seed: u64, config: GeneratorConfig) -> Generator {
        assert!(config.users > 0 && config.events_per_day > 0);
        let mut rng = Rng::new(seed ^ 0x6D65_7472_6963_7321);
        let id_key = rng.next_u64();
        let users: Vec<User> = (0..config.users)
            .map(|i| {
                let devices = (0..1 + u64::from(rng.chance(30)))
                    .map(|_| {
                        let serial = rng.next_u64();
                        let (kind, platform) = *rng.pick(&DEVICE_KINDS);
                        Device {
                            id: format!("{kind}-{:012x}", serial >> 16),
                            platform,
                        }
                    })
                    .collect();
                let given = *rng.pick(&GIVEN_NAMES);
                let family = *rng.pick(&FAMILY_NAMES);
                let domain = *rng.pick(&EMAIL_DOMAINS);
                User {
                    id: format!("user-{:06}", i + 1),
                    devices,
                    app_version: rng.pick::<&str>(&APP_VERSIONS),
                    home: rng.pick::<&str>(&LOCATIONS),
                    name: format!("{given} {family}"),
                    // ASCII local part, unique per user
                    email: format!("user.{:06}@{domain}", i + 1),
                }
            })
            .collect();
        let heavy = (config.users / 10).max(1);
        let heavy_users = (0..heavy)
            .map(|_| rng.below(config.users as u64) as usize)
            .collect();
        let mean_events = (SESSION_EVENTS.0 + SESSION_EVENTS.1) as f64 / 2.0;
        Generator {
            rng,
            id_key,
            users,
            heavy_users,
            profile_percent: config.profile_percent,
            sessions: std::collections::HashMap::new(),
            pending: std::collections::BinaryHeap::new(),
            sessions_started: 0,
            next_start_ms: START_UNIX_MS as f64,
            start_gap_ms: 86_400_000.0 * mean_events / config.events_per_day as f64,
            index: 0,
        }
    }

    /// Opens a session at `start_ms`: its events are scheduled.
    fn start_session(&mut self, start_ms: i64) {
        self.sessions_started += 1;
        let number = self.sessions_started;
        let rng = &mut self.rng;
        let user = if rng.chance(50) {
            *rng.pick(&self.heavy_users)
        } else {
            rng.below(self.users.len() as u64) as usize
        };
        let u = &self.users[user];
        let device = rng.below(u.devices.len() as u64) as usize;
        let location = if rng.chance(90) {
            u.home
        } else {
            *rng.pick(&LOCATIONS)
        };
        let events = rng.range(SESSION_EVENTS.0, SESSION_EVENTS.1) as u32;
        let length = rng.range(SESSION_MS.0, SESSION_MS.1);
        // The first event at the start, the others spread over the session.
        for i in 0..events {
            let at = if i == 0 {
                start_ms
            } else {
                start_ms + rng.range(1, length)
            };
            self.pending.push(std::cmp::Reverse((at, number, i)));
        }
        self.sessions.insert(
            number,
            Session {
                // Bijective in the counter: session ids never repeat.
                id: format!("sess-{:016x}", mix64(number ^ self.id_key)),
                user,
                device,
                location,
                remaining: events,
            },
        );
    }

    /// A UUID-shaped id whose first 64 bits are a bijection of the event's
    /// index: unique within a generator (and across seeds, almost surely).
    fn event_id(&mut self) -> String {
        let a = mix64(self.index ^ self.id_key);
        let b = self.rng.next_u64();
        format!(
            "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
            a >> 32,
            (a >> 16) & 0xffff,
            a & 0xfff,
            0x8000 | ((b >> 48) & 0x3fff),
            b & 0xffff_ffff_ffff
        )
    }

    fn next_event(&mut self) -> Event {
        self.index += 1;
        // Start every session due before the next pending event.
        while self
            .pending
            .peek()
            .is_none_or(|std::cmp::Reverse((at, _, _))| *at as f64 > self.next_start_ms)
        {
            let start = self.next_start_ms.floor() as i64;
            self.start_session(start);
            self.next_start_ms += self.rng.below(2_000_001) as f64 / 1e6 * self.start_gap_ms;
        }
        let std::cmp::Reverse((clock_ms, number, _)) =
            self.pending.pop().expect("a session was just started");
        let (session_id, user_index, device, location) = {
            let s = self.sessions.get_mut(&number).expect("the session is open");
            s.remaining -= 1;
            (s.id.clone(), s.user, s.device, s.location)
        };
        if self.sessions[&number].remaining == 0 {
            self.sessions.remove(&number);
        }
        let user = &self.users[user_index];
        let rng = &mut self.rng;

        // Half the timestamps carry milliseconds, half are whole seconds.
        let unix_ms = if rng.chance(50) {
            clock_ms
        } else {
            clock_ms - clock_ms.rem_euclid(1000)
        };
        let metric_type = match rng.below(100) {
            0..=34 => "talked_time",
            35..=54 => "microphone_used",
            55..=74 => "speaker_used",
            _ => "voice_sentiment",
        };
        let value = match metric_type {
            // seconds, two decimals, up to an hour; sometimes a whole number
            "talked_time" => {
                if rng.chance(20) {
                    MetricValue::Number(Decimal::int(rng.range(0, 3600)))
                } else {
                    MetricValue::Number(Decimal::new(rng.range(0, 360_000), 2))
                }
            }
            "microphone_used" => MetricValue::Number(Decimal::int(i64::from(rng.chance(85)))),
            "speaker_used" => MetricValue::Number(Decimal::int(i64::from(rng.chance(60)))),
            _ => {
                if rng.chance(40) {
                    let (label, score) = *rng.pick(&SENTIMENT_LABELS);
                    MetricValue::Label {
                        label,
                        score: Decimal::int(score),
                    }
                } else {
                    MetricValue::Number(Decimal::new(rng.range(-100, 100), 2))
                }
            }
        };
        let device_ref = &user.devices[device];
        let session_id = (!rng.chance(2)).then_some(session_id);
        let device_id = (!rng.chance(3)).then(|| device_ref.id.clone());
        let platform = (!rng.chance(3)).then_some(device_ref.platform);
        let app_version = (!rng.chance(3)).then(|| user.app_version.to_string());
        let location = (!rng.chance(5)).then_some(location);
        let sentiment_score = rng
            .chance(70)
            .then(|| Decimal::new(rng.range(-100, 100), 2));
        let profile = rng
            .chance(self.profile_percent)
            .then(|| (user.name.clone(), user.email.clone()));
        let user_id = user.id.clone();
        let event_id = self.event_id();
        Event {
            unix_us: unix_ms * 1000,
            timestamp: iso_utc_ms(unix_ms, unix_ms % 1000 != 0),
            user_id,
            session_id,
            metric_type,
            value,
            device_id,
            app_version,
            platform,
            location,
            sentiment_score,
            profile,
            event_id,
        }
    }
}

impl Iterator for Generator {
    type Item = Event;
    fn next(&mut self) -> Option<Event> {
        Some(self.next_event())
    }
}

/// `n` events from `seed`.
pub fn generate(seed: u64, n: usize) -> Vec<Event> {
    Generator::new(seed).take(n).collect()
}

/// `2024-08-12T12:00:00Z`, or `2024-08-12T12:00:00.123Z` with `millis`.
pub fn iso_utc_ms(unix_ms: i64, millis: bool) -> String {
    let secs = unix_ms.div_euclid(1000);
    let ms = unix_ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    let mut s = format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}",
        sod / 3600,
        sod / 60 % 60,
        sod % 60
    );
    if millis {
        let _ = write!(s, ".{ms:03}");
    }
    s.push('Z');
    s
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// A JSON string literal: quotes, backslashes and control characters escaped,
/// everything else (non-ASCII included) as UTF-8.
pub fn write_json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// A CSV field for COPY: always quoted (so an empty string is not NULL), with
/// embedded double quotes doubled. Backslash is not special in CSV mode.
pub fn write_csv_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        if c == '"' {
            out.push('"');
        }
        out.push(c);
    }
    out.push('"');
}

fn json_field_str(out: &mut String, key: &str, value: Option<&str>) {
    if let Some(v) = value {
        let _ = write!(out, ",\"{key}\":");
        write_json_str(out, v);
    }
}

fn csv_opt_str(out: &mut String, value: Option<&str>) {
    out.push(',');
    if let Some(v) = value {
        write_csv_str(out, v);
    }
}

/// One event's INSERT parameters, owned; [`InsertParams::refs`] lends them.
pub struct InsertParams<'e> {
    timestamp: SystemTime,
    event: &'e Event,
    metric_value: f64,
    metric_label: Option<&'static str>,
    sentiment_score: Option<f64>,
    attributes: Option<String>,
}

impl<'e> InsertParams<'e> {
    /// In [`COPY_COLUMNS`] order, typed as [`INSERT_TYPES`].
    pub fn refs(&self) -> [&(dyn ToSql + Sync); 12] {
        let e = self.event;
        [
            &self.timestamp,
            &e.user_id,
            &e.session_id,
            &e.metric_type,
            &self.metric_value,
            &self.metric_label,
            &e.device_id,
            &e.app_version,
            &e.location,
            &self.sentiment_score,
            &e.event_id,
            &self.attributes,
        ]
    }
}

/// Which `insert_metric` overload an event calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallOverload {
    /// metric_value double precision: [`CALL_NUMBER_TYPES`].
    Number,
    /// metric_value text (labels): [`CALL_TEXT_TYPES`].
    Text,
}

/// One event's `CALL insert_metric` parameters.
pub struct CallParams<'e> {
    pub overload: CallOverload,
    timestamp: SystemTime,
    event: &'e Event,
    number: f64,
    sentiment_score: Option<f64>,
    /// platform, name and email as a JSON object, or None when the event has none.
    attributes: Option<String>,
}

impl<'e> CallParams<'e> {
    /// In insert_metric's argument order, typed as the overload's types.
    pub fn refs(&self) -> [&(dyn ToSql + Sync); 11] {
        let e = self.event;
        let value: &(dyn ToSql + Sync) = match &e.value {
            MetricValue::Number(_) => &self.number,
            MetricValue::Label { label, .. } => label,
        };
        [
            &self.timestamp,
            &e.user_id,
            &e.session_id,
            &e.metric_type,
            value,
            &e.device_id,
            &e.app_version,
            &e.location,
            &self.sentiment_score,
            &e.event_id,
            &self.attributes,
        ]
    }
}

impl Event {
    pub fn system_time(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_micros(self.unix_us as u64)
    }

    /// The element ingest_json takes (long form); absent optional fields are left out.
    pub fn write_json(&self, out: &mut String) {
        out.push_str("{\"timestamp\":");
        write_json_str(out, &self.timestamp);
        out.push_str(",\"user_id\":");
        write_json_str(out, &self.user_id);
        json_field_str(out, "session_id", self.session_id.as_deref());
        out.push_str(",\"metric_type\":");
        write_json_str(out, self.metric_type);
        out.push_str(",\"metric_value\":");
        match &self.value {
            MetricValue::Number(d) => d.write(out),
            MetricValue::Label { label, .. } => write_json_str(out, label),
        }
        self.write_json_context(out, false);
    }

    /// A JSON object with the `metrics` columns, for `json_populate_recordset`:
    /// metric_value always a number, metric_label given for labels.
    pub fn write_row_json(&self, out: &mut String) {
        out.push_str("{\"timestamp\":");
        write_json_str(out, &self.timestamp);
        out.push_str(",\"user_id\":");
        write_json_str(out, &self.user_id);
        json_field_str(out, "session_id", self.session_id.as_deref());
        out.push_str(",\"metric_type\":");
        write_json_str(out, self.metric_type);
        out.push_str(",\"metric_value\":");
        self.value.stored().write(out);
        json_field_str(out, "metric_label", self.value.label());
        self.write_json_context(out, true);
    }

    /// The context fields: as an element (`row` false: platform, name and
    /// email as fields) or as a `metrics` row (platform in `attributes`).
    fn write_json_context(&self, out: &mut String, row: bool) {
        json_field_str(out, "device_id", self.device_id.as_deref());
        json_field_str(out, "app_version", self.app_version.as_deref());
        if row {
            if let Some(a) = self.attributes() {
                let _ = write!(out, ",\"attributes\":{a}");
            }
        } else {
            json_field_str(out, "platform", self.platform);
        }
        json_field_str(out, "location", self.location);
        if let (false, Some((name, email))) = (row, &self.profile) {
            json_field_str(out, "name", Some(name));
            json_field_str(out, "email", Some(email));
        }
        if let Some(s) = self.sentiment_score {
            out.push_str(",\"sentiment_score\":");
            s.write(out);
        }
        out.push_str(",\"event_id\":");
        write_json_str(out, &self.event_id);
        out.push('}');
    }

    pub fn json(&self) -> String {
        let mut s = String::with_capacity(320);
        self.write_json(&mut s);
        s
    }

    /// One CSV line (with `\n`) in [`COPY_COLUMNS`] order; NULL is an empty unquoted field.
    pub fn write_csv(&self, out: &mut String) {
        write_csv_str(out, &self.timestamp);
        out.push(',');
        write_csv_str(out, &self.user_id);
        csv_opt_str(out, self.session_id.as_deref());
        out.push(',');
        write_csv_str(out, self.metric_type);
        out.push(',');
        self.value.stored().write(out);
        csv_opt_str(out, self.value.label());
        csv_opt_str(out, self.device_id.as_deref());
        csv_opt_str(out, self.app_version.as_deref());
        csv_opt_str(out, self.location);
        out.push(',');
        if let Some(s) = self.sentiment_score {
            s.write(out);
        }
        out.push(',');
        write_csv_str(out, &self.event_id);
        csv_opt_str(out, self.attributes().as_deref());
        out.push('\n');
    }

    /// One CSV line for seed 000's table ([`SEED000_COLUMNS`]): metric_value is
    /// text there, so it gets the value as sent (number or label).
    pub fn write_seed000_csv(&self, out: &mut String) {
        write_csv_str(out, &self.timestamp);
        out.push(',');
        write_csv_str(out, &self.user_id);
        csv_opt_str(out, self.session_id.as_deref());
        out.push(',');
        write_csv_str(out, self.metric_type);
        out.push(',');
        match &self.value {
            MetricValue::Number(d) => write_csv_str(out, &d.text()),
            MetricValue::Label { label, .. } => write_csv_str(out, label),
        }
        csv_opt_str(out, self.device_id.as_deref());
        csv_opt_str(out, self.app_version.as_deref());
        csv_opt_str(out, self.location);
        out.push(',');
        if let Some(s) = self.sentiment_score {
            s.write(out);
        }
        out.push('\n');
    }

    /// Parameters for [`insert_sql`].
    pub fn insert_params(&self) -> InsertParams<'_> {
        InsertParams {
            timestamp: self.system_time(),
            event: self,
            metric_value: self.value.stored().to_f64(),
            metric_label: self.value.label(),
            sentiment_score: self.sentiment_score.map(Decimal::to_f64),
            attributes: self.attributes(),
        }
    }

    /// Parameters for `CALL metrics_ingest.insert_metric`: numbers (booleans as
    /// 0/1) through the float8 overload, labels through the text overload.
    pub fn call_params(&self) -> CallParams<'_> {
        CallParams {
            overload: match self.value {
                MetricValue::Number(_) => CallOverload::Number,
                MetricValue::Label { .. } => CallOverload::Text,
            },
            timestamp: self.system_time(),
            event: self,
            number: self.value.stored().to_f64(),
            sentiment_score: self.sentiment_score.map(Decimal::to_f64),
            attributes: self.call_attributes(),
        }
    }

    /// What the `attributes` column stores for this event: `{"platform": ...}`,
    /// or None without a platform.
    pub fn attributes(&self) -> Option<String> {
        self.platform.map(|p| {
            let mut s = String::from("{\"platform\":");
            write_json_str(&mut s, p);
            s.push('}');
            s
        })
    }

    /// insert_metric's `attributes` argument: the fields it has no argument
    /// for (platform; name and email when the event carries them), or None.
    fn call_attributes(&self) -> Option<String> {
        if self.platform.is_none() && self.profile.is_none() {
            return None;
        }
        let mut s = String::from("{");
        let mut field = |key: &str, value: &str| {
            if s.len() > 1 {
                s.push(',');
            }
            write_json_str(&mut s, key);
            s.push(':');
            write_json_str(&mut s, value);
        };
        if let Some(p) = self.platform {
            field("platform", p);
        }
        if let Some((name, email)) = &self.profile {
            field("name", name);
            field("email", email);
        }
        s.push('}');
        Some(s)
    }
}

/// `[e1,e2,...]` of ingest_json elements.
pub fn json_array(events: &[Event]) -> String {
    array_of(events, 330, Event::write_json)
}

/// `[r1,r2,...]` of row-shaped objects for json_populate_recordset.
pub fn row_json_array(events: &[Event]) -> String {
    array_of(events, 340, Event::write_row_json)
}

fn array_of(events: &[Event], bytes_per_event: usize, write: fn(&Event, &mut String)) -> String {
    let mut s = String::with_capacity(events.len() * bytes_per_event + 2);
    s.push('[');
    for (i, e) in events.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        write(e, &mut s);
    }
    s.push(']');
    s
}

/// COPY csv data for [`COPY_COLUMNS`].
pub fn csv(events: &[Event]) -> String {
    let mut s = String::with_capacity(events.len() * 300);
    for e in events {
        e.write_csv(&mut s);
    }
    s
}

/// COPY csv data for [`SEED000_COLUMNS`].
pub fn seed000_csv(events: &[Event]) -> String {
    let mut s = String::with_capacity(events.len() * 280);
    for e in events {
        e.write_seed000_csv(&mut s);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_and_unique() {
        let a = generate(7, 5_000);
        let b = generate(7, 5_000);
        assert_eq!(a, b);
        let ids: std::collections::HashSet<_> = a.iter().map(|e| &e.event_id).collect();
        assert_eq!(ids.len(), a.len());
        assert_ne!(generate(8, 10), generate(7, 10));
        for t in METRIC_TYPES {
            assert!(a.iter().any(|e| e.metric_type == t), "{t}");
        }
        assert!(a.iter().any(|e| e.value.label().is_some()));
        assert!(a.iter().any(|e| e.location.is_none()));
        assert!(a.iter().any(|e| e.platform.is_none()));
    }

    #[test]
    fn sessions_and_profiles() {
        use std::collections::HashMap;
        let events = generate(5, 50_000);
        // in time order, apart from whole-second truncation
        for w in events.windows(2) {
            assert!(w[1].unix_us + 1_000_000 > w[0].unix_us, "{w:?}");
        }
        // a session: one user, one device, platform, app version, location
        // (where given); a few dozen events over minutes
        type Seen = (
            String,
            Option<String>,
            Option<&'static str>,
            Option<&'static str>,
            i64,
            i64,
            usize,
        );
        let mut sessions: HashMap<&str, Seen> = HashMap::new();
        for e in &events {
            let Some(id) = e.session_id.as_deref() else {
                continue;
            };
            let s = sessions.entry(id).or_insert((
                e.user_id.clone(),
                None,
                None,
                None,
                e.unix_us,
                e.unix_us,
                0,
            ));
            assert_eq!(s.0, e.user_id);
            for (held, new) in [(&mut s.1, e.device_id.clone())] {
                if new.is_some() {
                    assert!(held.is_none() || *held == new, "{id}: {held:?} {new:?}");
                    *held = new;
                }
            }
            if e.platform.is_some() {
                assert!(s.2.is_none() || s.2 == e.platform);
                s.2 = e.platform;
            }
            if e.location.is_some() {
                assert!(s.3.is_none() || s.3 == e.location);
                s.3 = e.location;
            }
            s.4 = s.4.min(e.unix_us);
            s.5 = s.5.max(e.unix_us);
            s.6 += 1;
        }
        // sessions open at the end of the sample are cut short: look at
        // those that started in the first half
        let half = events[events.len() / 2].unix_us;
        let done: Vec<&Seen> = sessions.values().filter(|s| s.4 < half).collect();
        let mean = done.iter().map(|s| s.6).sum::<usize>() as f64 / done.len() as f64;
        assert!((25.0..45.0).contains(&mean), "events per session {mean}");
        let mut minutes: Vec<f64> = done.iter().map(|s| (s.5 - s.4) as f64 / 6e7).collect();
        minutes.sort_by(f64::total_cmp);
        let median = minutes[minutes.len() / 2];
        assert!((5.0..25.0).contains(&median), "median session {median} min");
        // several sessions of one user on one day
        let mut per_user_day: HashMap<(&str, i64), usize> = HashMap::new();
        for s in sessions.values() {
            *per_user_day
                .entry((s.0.as_str(), s.4 / 86_400_000_000))
                .or_default() += 1;
        }
        assert!(per_user_day.values().any(|&n| n >= 3));
        // name and email: on about a fifth of events, the same for every event of a user
        let mut profiles: HashMap<&str, &(String, String)> = HashMap::new();
        let mut with = 0;
        for e in &events {
            if let Some(p) = &e.profile {
                with += 1;
                assert!(p.1.contains('@'));
                assert_eq!(*profiles.entry(&e.user_id).or_insert(p), p);
            }
        }
        assert!((8_000..12_000).contains(&with), "{with}");
    }

    #[test]
    fn timestamps() {
        assert_eq!(iso_utc_ms(1_723_464_000_000, false), "2024-08-12T12:00:00Z");
        assert_eq!(
            iso_utc_ms(1_723_464_000_123, true),
            "2024-08-12T12:00:00.123Z"
        );
        assert_eq!(iso_utc_ms(951_782_400_000, false), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn json_is_valid_and_round_trips() {
        for e in generate(3, 2_000) {
            let v: serde_json::Value = serde_json::from_str(&e.json()).unwrap();
            assert_eq!(v["event_id"], e.event_id.as_str());
            assert_eq!(v["location"].as_str(), e.location);
            let mut row = String::new();
            e.write_row_json(&mut row);
            let r: serde_json::Value = serde_json::from_str(&row).unwrap();
            assert_eq!(
                r["metric_value"].as_f64().unwrap(),
                e.value.stored().to_f64()
            );
        }
    }

    #[test]
    fn decimal_text_matches_f64() {
        for units in -100_000..100_000 {
            let d = Decimal::new(units, 2);
            assert_eq!(d.text().parse::<f64>().unwrap(), d.to_f64(), "{}", d.text());
        }
        assert_eq!(Decimal::new(-5, 2).text(), "-0.05");
    }

    #[test]
    fn escaping() {
        let mut s = String::new();
        write_json_str(&mut s, "a\"b\\c\u{1}東京");
        assert_eq!(s, r#""a\"b\\c\u0001東京""#);
        let mut c = String::new();
        write_csv_str(&mut c, "Zone \"B\", \\ x");
        assert_eq!(c, "\"Zone \"\"B\"\", \\ x\"");
    }
}
