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

/// What sessions and users need of an element: nothing (16 bytes) unless it
/// names a session or carries a profile.
struct Element {
    unix_us: i64,
    about: Option<Box<About>>,
    /// A row of it was refused (conflict, kept out by a trigger): its profile
    /// is not applied.
    refused: bool,
}

struct About {
    user_id: String,
    /// session_id, device_id, app_version, platform, location: when the
    /// element names a session.
    session: Option<[Option<String>; 5]>,
    profile: Option<Profile>,
}

#[derive(Default)]
pub struct Rollup {
    rows: Vec<Row>,
    /// Rows found not stored after all, by index in `rows`.
    not_stored: Vec<bool>,
    elements: Vec<Element>,
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
        let session = context.session_id.as_ref().map(|session_id| {
            [
                Some(session_id.clone()),
                context.device_id.clone(),
                context.app_version.clone(),
                context.platform.clone(),
                context.location.clone(),
            ]
        });
        let profile = (!context.profile.is_empty()).then(|| context.profile.clone());
        self.elements.push(Element {
            unix_us: context.unix_us,
            about: (session.is_some() || profile.is_some()).then(|| {
                Box::new(About {
                    user_id: context.user_id.clone(),
                    session,
                    profile,
                })
            }),
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
        let mut daily: HashMap<(i32, u16), DailyPart> = HashMap::new();
        let mut stored_rows = vec![0i64; self.elements.len()];
        let stored = |i: usize| self.not_stored.get(i) != Some(&true);
        for (_, row) in self.rows.iter().enumerate().filter(|(i, _)| stored(*i)) {
            stored_rows[row.element as usize] += 1;
            daily
                .entry((row.unix_day, row.type_index))
                .and_modify(|d| {
                    d.samples += 1;
                    d.total += row.value;
                    d.min = d.min.min(row.value);
                    d.max = d.max.max(row.value);
                })
                .or_insert_with(|| DailyPart {
                    unix_day: row.unix_day,
                    metric_type: self.metric_types[row.type_index as usize].clone(),
                    samples: 1,
                    total: row.value,
                    min: row.value,
                    max: row.value,
                });
        }

        let mut sessions: HashMap<(&str, &str), SessionPart> = HashMap::new();
        let mut profiles: HashMap<&str, ProfilePart> = HashMap::new();
        for (element, &count) in self.elements.iter().zip(&stored_rows) {
            let Some(about) = element.about.as_deref() else {
                continue;
            };
            if let (Some([Some(session_id), device_id, app_version, platform, location]), true) =
                (&about.session, count > 0)
            {
                let values = [device_id, app_version, platform, location];
                sessions
                    .entry((about.user_id.as_str(), session_id.as_str()))
                    .and_modify(|s| s.merge(element.unix_us, count, values))
                    .or_insert_with(|| SessionPart {
                        user_id: about.user_id.clone(),
                        session_id: session_id.clone(),
                        start_us: element.unix_us,
                        end_us: element.unix_us,
                        metric_count: count,
                        device_id: device_id.clone(),
                        app_version: app_version.clone(),
                        platform: platform.clone(),
                        location: location.clone(),
                    });
            }
            // A profile counts from an element that stored a row: a retry (all
            // duplicates) changes nothing, a refused element neither.
            let Some(profile) = about
                .profile
                .as_ref()
                .filter(|_| count > 0 && !element.refused)
            else {
                continue;
            };
            // Elements come in ordinal order: on equal times the later one wins.
            let part = profiles
                .entry(about.user_id.as_str())
                .or_insert_with(|| ProfilePart {
                    user_id: about.user_id.clone(),
                    time_us: i64::MIN,
                    name: None,
                    name_us: i64::MIN,
                    email: None,
                    email_us: i64::MIN,
                });
            let at = element.unix_us;
            part.time_us = part.time_us.max(at);
            if profile.name.is_some() && at >= part.name_us {
                part.name.clone_from(&profile.name);
                part.name_us = at;
            }
            if profile.email.is_some() && at >= part.email_us {
                part.email.clone_from(&profile.email);
                part.email_us = at;
            }
        }

        let mut summary = Summary {
            daily: daily.into_values().collect(),
            sessions: sessions.into_values().collect(),
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

impl SessionPart {
    fn merge(&mut self, unix_us: i64, count: i64, values: [&Option<String>; 4]) {
        self.start_us = self.start_us.min(unix_us);
        self.metric_count += count;
        let mine = [
            &mut self.device_id,
            &mut self.app_version,
            &mut self.platform,
            &mut self.location,
        ];
        if unix_us > self.end_us {
            self.end_us = unix_us;
            for (mine, theirs) in mine.into_iter().zip(values) {
                mine.clone_from(theirs);
            }
        } else if unix_us == self.end_us {
            // None < Some, and String orders by bytes: COLLATE "C"'s greatest.
            for (mine, theirs) in mine.into_iter().zip(values) {
                if *theirs > *mine {
                    mine.clone_from(theirs);
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
