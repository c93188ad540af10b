//! What one call adds to `sessions` and `daily_totals`, and the profiles it
//! carries for `users`.
//!
//! The writer tells the rollup every element it stores, then every row that
//! turned out not to be stored after all (a repeat of a stored event, a row a
//! trigger kept out); `finish` aggregates what is left. The result is written,
//! in the same transaction as the rows, as delta rows that `run_maintenance`
//! compacts: concurrent calls only ever insert, so none waits for another.

use std::collections::HashMap;

use super::element::{Profile, ValidElement};

const US_PER_DAY: i64 = 86_400_000_000;

/// One (UTC day, metric type) of a call's stored rows.
#[derive(Debug, Clone, PartialEq)]
pub struct DailyPart {
    /// Days since 1970-01-01.
    pub unix_day: i32,
    pub metric_type: String,
    pub samples: i64,
    pub total: f64,
    pub min: f64,
    pub max: f64,
}

/// One (user_id, session_id) of a call's stored rows.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionPart {
    pub user_id: String,
    pub session_id: String,
    /// Microseconds since 1970-01-01 UTC.
    pub start_us: i64,
    pub end_us: i64,
    pub metric_count: i64,
    /// From the rows at `end_us`: the greatest value of each, in byte order
    /// (COLLATE "C"), NULL only when every such row has none.
    pub device_id: Option<String>,
    pub app_version: Option<String>,
    pub platform: Option<String>,
    pub location: Option<String>,
}

/// The profile a call carries for one user: each field from the newest
/// element of the call that has it, with that element's time. Applied as if
/// the call's elements came one by one in time order: a field replaces the
/// stored one when its element is at least as new as the stored profile_time.
#[derive(Debug, Clone, PartialEq)]
pub struct ProfilePart {
    pub user_id: String,
    /// The newest profile-carrying element's time (microseconds since 1970).
    pub time_us: i64,
    pub name: Option<String>,
    pub name_us: i64,
    pub email: Option<String>,
    pub email_us: i64,
}

#[derive(Debug, Default)]
pub struct Summary {
    pub daily: Vec<DailyPart>,
    pub sessions: Vec<SessionPart>,
    pub profiles: Vec<ProfilePart>,
}

/// One stored row: 24 bytes, kept for every row of a call until it finishes.
struct Row {
    ordinal: u32,
    measurement: u16,
    type_index: u16,
    element: u32,
    unix_day: i32,
    value: f64,
}

/// What sessions and users need of an element (24 bytes): its time, which of
/// the call's distinct (user, session, values) it names, and its profile.
struct Element {
    unix_us: i64,
    /// Index in `Abouts::list`, or `NO_ABOUT` when the element names no session
    /// and carries no profile.
    about: u32,
    profile: Option<Box<Profile<'static>>>,
    /// A row of it was refused (conflict, kept out by a trigger): its profile
    /// is not applied.
    refused: bool,
}

const NO_ABOUT: u32 = u32::MAX;

/// A user, and when the element names a session: session_id, device_id,
/// app_version, platform, location.
struct About {
    user_id: String,
    session: Option<[Option<String>; 5]>,
}

impl About {
    /// device_id, app_version, platform or location (`field` 0 to 3).
    fn value(&self, field: usize) -> &Option<String> {
        match &self.session {
            Some(values) => &values[field + 1],
            None => &None,
        }
    }
}

/// The call's distinct `About`s, each kept once: a call's elements mostly
/// repeat a few hundred sessions, so an element costs one lookup of a key
/// built in a reused buffer rather than six copies of its strings.
#[derive(Default)]
struct Abouts {
    index: HashMap<Vec<u8>, u32>,
    list: Vec<About>,
    key: Vec<u8>,
}

impl Abouts {
    fn intern(&mut self, user_id: &str, session: Option<[Option<&str>; 5]>) -> u32 {
        // Each field as a tag byte, then its length and bytes: no two tuples
        // share a key, whatever their text holds.
        self.key.clear();
        let fields = session.iter().flatten();
        for field in std::iter::once(Some(user_id)).chain(fields.copied()) {
            match field {
                None => self.key.push(0),
                Some(text) => {
                    self.key.push(1);
                    self.key
                        .extend_from_slice(&(text.len() as u32).to_le_bytes());
                    self.key.extend_from_slice(text.as_bytes());
                }
            }
        }
        if let Some(&i) = self.index.get(self.key.as_slice()) {
            return i;
        }
        let i = self.list.len() as u32;
        self.list.push(About {
            user_id: user_id.to_owned(),
            session: session.map(|values| values.map(|v| v.map(str::to_owned))),
        });
        self.index.insert(self.key.clone(), i);
        i
    }
}

/// A session as the call's elements build it up: each of device_id,
/// app_version, platform and location names the `About` it currently comes from.
struct SessionAcc {
    start_us: i64,
    end_us: i64,
    metric_count: i64,
    values_from: [u32; 4],
}

#[derive(Default)]
pub struct Rollup {
    rows: Vec<Row>,
    /// Rows found not stored after all, by index in `rows`.
    not_stored: Vec<bool>,
    elements: Vec<Element>,
    abouts: Abouts,
    metric_types: Vec<String>,
}

impl Rollup {
    /// Records every row of an element as stored. Ordinals must increase.
    pub fn add(&mut self, ordinal: usize, element: &ValidElement) {
        let context = &element.context;
        let unix_day = context.unix_us.div_euclid(US_PER_DAY) as i32;
        let index = self.elements.len();
        for (measurement, m) in element.measurements.iter().enumerate() {
            let type_index = match self.metric_types.iter().position(|t| *t == m.metric_type) {
                Some(i) => i,
                None => {
                    self.metric_types.push(m.metric_type.clone());
                    self.metric_types.len() - 1
                }
            };
            self.rows.push(Row {
                ordinal: ordinal as u32,
                measurement: measurement as u16,
                type_index: type_index as u16,
                element: index as u32,
                unix_day,
                value: m.value,
            });
        }
        let session = context.session_id.as_deref().map(|session_id| {
            [
                Some(session_id),
                context.device_id.as_deref(),
                context.app_version.as_deref(),
                context.platform.as_deref(),
                context.location.as_deref(),
            ]
        });
        let profile =
            (!context.profile.is_empty()).then(|| Box::new(context.profile.clone().into_owned()));
        let about = if session.is_some() || profile.is_some() {
            self.abouts.intern(&context.user_id, session)
        } else {
            NO_ABOUT
        };
        self.elements.push(Element {
            unix_us: context.unix_us,
            about,
            profile,
            refused: false,
        });
    }

    /// Row `measurement` of element `ordinal` was not stored: it repeats a
    /// stored event (`refused` false) or was refused (a conflict, a trigger).
    pub fn not_stored(&mut self, ordinal: usize, measurement: usize, refused: bool) {
        let key = (ordinal as u32, measurement as u16);
        let found = self
            .rows
            .binary_search_by(|r| (r.ordinal, r.measurement).cmp(&key));
        if let Ok(i) = found {
            if self.not_stored.len() <= i {
                self.not_stored.resize(self.rows.len(), false);
            }
            self.not_stored[i] = true;
            if refused {
                let element = self.rows[i].element as usize;
                self.elements[element].refused = true;
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub fn finish(self) -> Summary {
        let mut daily: Vec<DailyPart> = Vec::new();
        let mut daily_index: HashMap<(i32, u16), usize> = HashMap::new();
        // The (day, part) each type's last row went to: a call's rows mostly
        // share a day, so most rows skip the hash.
        let mut last: Vec<Option<(i32, usize)>> = vec![None; self.metric_types.len()];
        let mut stored_rows = vec![0i64; self.elements.len()];
        let stored = |i: usize| self.not_stored.get(i) != Some(&true);
        for (_, row) in self.rows.iter().enumerate().filter(|(i, _)| stored(*i)) {
            stored_rows[row.element as usize] += 1;
            let slot = &mut last[row.type_index as usize];
            let i = match *slot {
                Some((day, i)) if day == row.unix_day => i,
                _ => {
                    let i = *daily_index
                        .entry((row.unix_day, row.type_index))
                        .or_insert_with(|| {
                            daily.push(DailyPart {
                                unix_day: row.unix_day,
                                metric_type: self.metric_types[row.type_index as usize].clone(),
                                samples: 0,
                                total: 0.0,
                                min: f64::INFINITY,
                                max: f64::NEG_INFINITY,
                            });
                            daily.len() - 1
                        });
                    *slot = Some((row.unix_day, i));
                    i
                }
            };
            let d = &mut daily[i];
            d.samples += 1;
            d.total += row.value;
            d.min = d.min.min(row.value);
            d.max = d.max.max(row.value);
        }

        // The call's sessions: `About`s of the same (user, session) with other
        // values are one session.
        let abouts = &self.abouts.list;
        let mut session_of: Vec<usize> = Vec::with_capacity(abouts.len());
        let mut session_keys: HashMap<(&str, &str), usize> = HashMap::new();
        for about in abouts {
            let key = about
                .session
                .as_ref()
                .and_then(|values| values[0].as_deref())
                .map(|session_id| (about.user_id.as_str(), session_id));
            session_of.push(match key {
                Some(key) => {
                    let next = session_keys.len();
                    *session_keys.entry(key).or_insert(next)
                }
                None => usize::MAX,
            });
        }
        let mut sessions: Vec<Option<SessionAcc>> = Vec::new();
        sessions.resize_with(session_keys.len(), || None);
        let mut profiles: HashMap<&str, ProfilePart> = HashMap::new();
        for (element, &count) in self.elements.iter().zip(&stored_rows) {
            if element.about == NO_ABOUT || count == 0 {
                continue;
            }
            let about = element.about;
            let at = element.unix_us;
            if let Some(acc) = sessions.get_mut(session_of[about as usize]) {
                match acc {
                    None => {
                        *acc = Some(SessionAcc {
                            start_us: at,
                            end_us: at,
                            metric_count: count,
                            values_from: [about; 4],
                        })
                    }
                    Some(acc) => acc.merge(abouts, at, count, about),
                }
            }
            // A profile counts from an element that stored a row: a retry (all
            // duplicates) changes nothing, a refused element neither.
            let Some(profile) = element.profile.as_deref().filter(|_| !element.refused) else {
                continue;
            };
            // Elements come in ordinal order: on equal times the later one wins.
            let user_id = abouts[about as usize].user_id.as_str();
            let part = profiles.entry(user_id).or_insert_with(|| ProfilePart {
                user_id: user_id.to_owned(),
                time_us: i64::MIN,
                name: None,
                name_us: i64::MIN,
                email: None,
                email_us: i64::MIN,
            });
            part.time_us = part.time_us.max(at);
            if profile.name.is_some() && at >= part.name_us {
                part.name = profile.name.as_deref().map(str::to_owned);
                part.name_us = at;
            }
            if profile.email.is_some() && at >= part.email_us {
                part.email = profile.email.as_deref().map(str::to_owned);
                part.email_us = at;
            }
        }

        let mut session_parts: Vec<SessionPart> = Vec::with_capacity(sessions.len());
        for ((user_id, session_id), i) in session_keys {
            let Some(acc) = &sessions[i] else { continue };
            let value = |field: usize| abouts[acc.values_from[field] as usize].value(field).clone();
            session_parts.push(SessionPart {
                user_id: user_id.to_owned(),
                session_id: session_id.to_owned(),
                start_us: acc.start_us,
                end_us: acc.end_us,
                metric_count: acc.metric_count,
                device_id: value(0),
                app_version: value(1),
                platform: value(2),
                location: value(3),
            });
        }
        let mut summary = Summary {
            daily,
            sessions: session_parts,
            profiles: profiles.into_values().collect(),
        };
        // A fixed order: the delta rows of concurrent calls lock nothing, but
        // users rows are inserted and locked, and calls that take them in one
        // order cannot deadlock.
        summary
            .daily
            .sort_by(|a, b| (a.unix_day, &a.metric_type).cmp(&(b.unix_day, &b.metric_type)));
        summary
            .sessions
            .sort_by(|a, b| (&a.user_id, &a.session_id).cmp(&(&b.user_id, &b.session_id)));
        summary.profiles.sort_by(|a, b| a.user_id.cmp(&b.user_id));
        summary
    }
}

impl SessionAcc {
    /// Adds `count` rows of the element at `unix_us` naming `about`.
    fn merge(&mut self, abouts: &[About], unix_us: i64, count: i64, about: u32) {
        self.start_us = self.start_us.min(unix_us);
        self.metric_count += count;
        if unix_us > self.end_us {
            self.end_us = unix_us;
            self.values_from = [about; 4];
        } else if unix_us == self.end_us {
            // None < Some, and String orders by bytes: COLLATE "C"'s greatest.
            let theirs = &abouts[about as usize];
            for (field, from) in self.values_from.iter_mut().enumerate() {
                if theirs.value(field) > abouts[*from as usize].value(field) {
                    *from = about;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::element::validate_json_element;
    use crate::core::registry::Registry;

    fn rollup_of(elements: &[&str]) -> Rollup {
        let registry = Registry::builtin();
        let mut rollup = Rollup::default();
        for (i, raw) in elements.iter().enumerate() {
            let element = validate_json_element(raw, &registry).expect("valid");
            rollup.add(i + 1, &element);
        }
        rollup
    }

    #[test]
    fn daily_parts_count_each_stored_row_by_utc_day_and_type() {
        let rollup = rollup_of(&[
            r#"{"user_id":"u","timestamp":"2024-05-01T23:59:59Z","talked_time":10,"speaker_used":true}"#,
            r#"{"user_id":"u","timestamp":"2024-05-02T00:00:00+02:00","talked_time":4}"#,
            r#"{"user_id":"v","timestamp":"2024-05-02T00:00:00Z","talked_time":1.5}"#,
        ]);
        let daily = rollup.finish().daily;
        fn day(d: &DailyPart) -> (i32, &str, i64, f64, f64, f64) {
            (
                d.unix_day,
                d.metric_type.as_str(),
                d.samples,
                d.total,
                d.min,
                d.max,
            )
        }
        assert_eq!(
            daily.iter().map(day).collect::<Vec<_>>(),
            vec![
                (19844, "speaker_used", 1, 1.0, 1.0, 1.0),
                (19844, "talked_time", 2, 14.0, 4.0, 10.0),
                (19845, "talked_time", 1, 1.5, 1.5, 1.5),
            ]
        );
    }

    #[test]
    fn rows_not_stored_count_nowhere_and_refused_ones_drop_the_profile() {
        let mut rollup = rollup_of(&[
            r#"{"user_id":"u","session_id":"s","timestamp":"2024-05-01T10:00:00Z","talked_time":10,"speaker_used":true,"name":"A","email":"a@x"}"#,
            r#"{"user_id":"u","session_id":"s","timestamp":"2024-05-01T11:00:00Z","talked_time":3,"name":"B"}"#,
        ]);
        rollup.not_stored(1, 1, false);
        rollup.not_stored(2, 0, true);
        let summary = rollup.finish();
        assert_eq!(summary.daily.len(), 1);
        assert_eq!(summary.daily[0].samples, 1);
        assert_eq!(summary.sessions.len(), 1);
        let s = &summary.sessions[0];
        assert_eq!(
            (s.metric_count, s.start_us, s.end_us),
            (1, s.start_us, s.start_us)
        );
        assert_eq!(summary.profiles.len(), 1);
        assert_eq!(summary.profiles[0].name.as_deref(), Some("A"));
    }

    #[test]
    fn sessions_take_their_values_from_the_latest_rows_and_the_greatest_on_ties() {
        let summary = rollup_of(&[
            r#"{"user_id":"u","session_id":"s","timestamp":"2024-05-01T10:00:02Z","talked_time":1,"device_id":"b","location":"Z"}"#,
            r#"{"user_id":"u","session_id":"s","timestamp":"2024-05-01T10:00:01Z","talked_time":1,"device_id":"z","platform":"ios"}"#,
            r#"{"user_id":"u","session_id":"s","timestamp":"2024-05-01T10:00:02Z","talked_time":1,"device_id":"a","location":"a"}"#,
            r#"{"user_id":"w","session_id":"s","timestamp":"2024-05-01T10:00:00Z","talked_time":1}"#,
            r#"{"user_id":"w","timestamp":"2024-05-01T10:00:00Z","talked_time":1}"#,
        ])
        .finish();
        let u = &summary.sessions[0];
        assert_eq!(u.metric_count, 3);
        assert_eq!(u.device_id.as_deref(), Some("b"));
        assert_eq!(u.platform, None);
        assert_eq!(u.location.as_deref(), Some("a"), "byte order: 'a' > 'Z'");
        assert_eq!(u.end_us - u.start_us, 1_000_000);
        assert_eq!(summary.sessions[1].user_id, "w");
        assert_eq!(
            summary.sessions[1].metric_count, 1,
            "the same session_id of another user is another session"
        );
    }

    #[test]
    fn rows_found_not_stored_between_later_additions_are_all_kept_out() {
        let registry = Registry::builtin();
        let mut rollup = Rollup::default();
        let raw = |t: &str| {
            format!(r#"{{"user_id":"u","timestamp":"2024-05-01T10:00:0{t}Z","talked_time":1}}"#)
        };
        for (ordinal, t) in ["1", "2", "3"].iter().enumerate() {
            rollup.add(
                ordinal + 1,
                &validate_json_element(&raw(t), &registry).unwrap(),
            );
            rollup.not_stored(ordinal + 1, 0, false);
        }
        rollup.add(4, &validate_json_element(&raw("4"), &registry).unwrap());
        rollup.not_stored(4, 0, false);
        assert!(rollup.finish().daily.is_empty());
    }

    #[test]
    fn a_retry_carries_no_profile() {
        let mut rollup = rollup_of(&[
            r#"{"user_id":"u","timestamp":"2024-05-01T10:00:00Z","talked_time":1,"email":"a@x"}"#,
        ]);
        rollup.not_stored(1, 0, false);
        assert!(rollup.finish().profiles.is_empty());
    }

    #[test]
    fn the_newest_profile_of_a_call_wins_field_by_field() {
        let summary = rollup_of(&[
            r#"{"user_id":"u","timestamp":"2024-05-03T00:00:00Z","talked_time":1,"name":"New"}"#,
            r#"{"user_id":"u","timestamp":"2024-05-01T00:00:00Z","talked_time":1,"name":"Old","email":"old@x"}"#,
            r#"{"user_id":"u","timestamp":"2024-05-03T00:00:00Z","talked_time":1,"name":"Newer"}"#,
        ])
        .finish();
        let p = &summary.profiles[0];
        assert_eq!(p.name.as_deref(), Some("Newer"));
        assert_eq!(p.email.as_deref(), Some("old@x"));
        assert_eq!(p.time_us, 1_714_694_400_000_000);
        assert_eq!(p.name_us, p.time_us);
        assert_eq!(
            p.email_us, 1_714_521_600_000_000,
            "the email keeps its own, older time"
        );
    }
}
