//! The pure parts of the fetch kind: reading the headers that steer a
//! transfer (`Retry-After`, `Content-Range`, validators), deciding what an
//! answer means for the job, and the checkpoint's encoding. No I/O here,
//! so that every rule is unit-tested.

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

/// The longest `Retry-After` honoured; the runner caps deferrals at the
/// same hour.
pub const MAX_RETRY_AFTER: Duration = super::super::MAX_DEFER;

/// How long a `Retry-After` value asks to wait, read at `now`: delay
/// seconds or an HTTP date (RFC 9110, 10.2.3), capped at an hour. A date in
/// the past is no wait. `None` for a value that is neither.
pub fn retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    let wait = if let Ok(secs) = value.parse::<u64>() {
        Duration::from_secs(secs)
    } else {
        let at = httpdate::parse_http_date(value).ok()?;
        at.duration_since(now).unwrap_or(Duration::ZERO)
    };
    Some(wait.min(MAX_RETRY_AFTER))
}

/// A `Content-Range` header of a 206 or 416 answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContentRange {
    /// `bytes first-last/complete`: the body holds bytes `first..=last` of
    /// a representation of `complete` bytes (`None` for `*`, unknown).
    Bytes {
        first: u64,
        last: u64,
        complete: Option<u64>,
    },
    /// `bytes */complete`: the range asked for is past the end (416).
    Unsatisfied { complete: u64 },
}

/// Parses a `Content-Range` value (RFC 9110, 14.4); `None` when it is not
/// one a byte range request can get.
pub fn content_range(value: &str) -> Option<ContentRange> {
    let rest = value.trim().strip_prefix("bytes")?;
    // The unit is followed by one space; tolerate more.
    let rest = rest.trim_start();
    let (range, complete) = rest.split_once('/')?;
    if range.trim() == "*" {
        return Some(ContentRange::Unsatisfied {
            complete: complete.trim().parse().ok()?,
        });
    }
    let (first, last) = range.split_once('-')?;
    let first: u64 = first.trim().parse().ok()?;
    let last: u64 = last.trim().parse().ok()?;
    let complete = match complete.trim() {
        "*" => None,
        n => Some(n.parse().ok()?),
    };
    if last < first || complete.is_some_and(|c| last >= c) {
        return None;
    }
    Some(ContentRange::Bytes {
        first,
        last,
        complete,
    })
}

/// The validator a resumed request sends in `If-Range`: a strong ETag, else
/// `Last-Modified`. A weak ETag (`W/"..."`) may not be used there (RFC 9110,
/// 13.1.5), and neither may nothing: such a body cannot be resumed.
pub fn range_validator(etag: Option<&str>, last_modified: Option<&str>) -> Option<String> {
    match etag {
        Some(tag) if !tag.trim_start().starts_with("W/") && !tag.trim().is_empty() => {
            Some(tag.trim().to_string())
        }
        _ => last_modified
            .map(str::trim)
            .filter(|d| httpdate::parse_http_date(d).is_ok())
            .map(str::to_string),
    }
}

/// What an answer's status means for the job, once redirects, 304 and the
/// body statuses (2xx, 206, 416) are dealt with by the transfer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// The server asked for a pause: the job waits, using no attempt.
    Wait(Duration),
    /// Another attempt may succeed (5xx, 408, 429 or 503 without a wait).
    Retry,
    /// Another attempt would get the same answer (other 4xx, 1xx, odd 3xx).
    Fail,
}

/// Classifies a status that is not a success, with the `Retry-After` wait
/// it came with, if any.
pub fn verdict(status: u16, retry_after: Option<Duration>) -> Verdict {
    match (status, retry_after) {
        (429 | 503, Some(d)) => Verdict::Wait(d),
        (408 | 429, _) | (500..=599, _) => Verdict::Retry,
        _ => Verdict::Fail,
    }
}

/// Whether a request that failed may be sent again: always when it never
/// left (a connect error); otherwise only an idempotent one, or one the
/// spec allows (`retry_unsafe`).
pub fn may_resend(sent: bool, idempotent: bool, retry_unsafe: bool) -> bool {
    !sent || idempotent || retry_unsafe
}

/// The job's checkpoint: what the next attempt needs to resume the `.part`
/// file. How far the download got is not in it: the `.part` file's length
/// is the truth, and saving it here after every write would cost a store
/// commit per chunk.
///
/// JSON with defaults for every field, so that a later quernd reads what
/// this one saved (and an older one's, once fields are added), and a
/// version to change the meaning of a field if ever needed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Saved {
    /// The encoding's version: [`Saved::VERSION`].
    #[serde(default)]
    pub v: u32,
    /// The URL the `.part` file was downloaded from (the spec's, before
    /// redirects): a checkpoint of another URL is not resumed.
    #[serde(default)]
    pub url: String,
    /// The `If-Range` validator of the body in the `.part` file; `None`
    /// when the server gave none, and the file cannot be resumed.
    #[serde(default)]
    pub validator: Option<String>,
}

impl Saved {
    /// The version this build writes.
    pub const VERSION: u32 = 1;

    /// The checkpoint's bytes.
    pub fn encode(&self) -> Vec<u8> {
        // A struct of strings always serialises.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// A checkpoint saved by this or a later build; `None` for bytes that
    /// are not one, or of a version this build cannot read, which then
    /// restart the download rather than resume it wrongly.
    pub fn decode(bytes: &[u8]) -> Option<Saved> {
        let saved: Saved = serde_json::from_slice(bytes).ok()?;
        (saved.v == Saved::VERSION).then_some(saved)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_reads_seconds_and_dates_and_caps_them() {
        let now = httpdate::parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").unwrap();
        assert_eq!(retry_after("30", now), Some(Duration::from_secs(30)));
        assert_eq!(retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(
            retry_after("Sun, 06 Nov 1994 08:50:07 GMT", now),
            Some(Duration::from_secs(30))
        );
        // In the past: no wait.
        assert_eq!(
            retry_after("Sun, 06 Nov 1994 08:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(retry_after("999999", now), Some(MAX_RETRY_AFTER));
        assert_eq!(
            retry_after("Mon, 07 Nov 1994 08:49:37 GMT", now),
            Some(MAX_RETRY_AFTER)
        );
        for bad in ["", "soon", "-1", "1.5", "Sun, 06 Nov 1994"] {
            assert_eq!(retry_after(bad, now), None, "{bad:?}");
        }
    }

    #[test]
    fn content_range_reads_ranges_and_rejects_nonsense() {
        assert_eq!(
            content_range("bytes 100-199/200"),
            Some(ContentRange::Bytes {
                first: 100,
                last: 199,
                complete: Some(200)
            })
        );
        assert_eq!(
            content_range("bytes 0-9/*"),
            Some(ContentRange::Bytes {
                first: 0,
                last: 9,
                complete: None
            })
        );
        assert_eq!(
            content_range("bytes */500"),
            Some(ContentRange::Unsatisfied { complete: 500 })
        );
        for bad in [
            "",
            "bytes",
            "items 0-1/2",
            "bytes 5-4/10",
            "bytes 0-10/10",
            "bytes a-b/c",
            "bytes 0-1",
            "bytes */*",
        ] {
            assert_eq!(content_range(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn if_range_uses_a_strong_etag_else_a_date() {
        let date = "Sun, 06 Nov 1994 08:49:37 GMT";
        assert_eq!(
            range_validator(Some("\"abc\""), Some(date)).as_deref(),
            Some("\"abc\"")
        );
        assert_eq!(
            range_validator(Some("W/\"abc\""), Some(date)).as_deref(),
            Some(date)
        );
        assert_eq!(range_validator(None, Some(date)).as_deref(), Some(date));
        assert_eq!(range_validator(Some("W/\"abc\""), None), None);
        assert_eq!(range_validator(None, Some("yesterday")), None);
        assert_eq!(range_validator(None, None), None);
    }

    #[test]
    fn statuses_are_classified_as_the_issue_says() {
        let s = Some(Duration::from_secs(1));
        assert_eq!(verdict(429, s), Verdict::Wait(Duration::from_secs(1)));
        assert_eq!(verdict(503, s), Verdict::Wait(Duration::from_secs(1)));
        assert_eq!(verdict(429, None), Verdict::Retry);
        assert_eq!(verdict(503, None), Verdict::Retry);
        assert_eq!(verdict(500, s), Verdict::Retry);
        assert_eq!(verdict(502, None), Verdict::Retry);
        assert_eq!(verdict(408, None), Verdict::Retry);
        for fail in [400, 401, 403, 404, 410, 418, 451, 300, 100] {
            assert_eq!(verdict(fail, s), Verdict::Fail, "{fail}");
        }
    }

    #[test]
    fn only_safe_or_allowed_requests_are_resent() {
        assert!(may_resend(false, false, false), "a connect error");
        assert!(may_resend(true, true, false), "PUT");
        assert!(!may_resend(true, false, false), "POST");
        assert!(may_resend(true, false, true), "POST with retry_unsafe");
    }

    #[test]
    fn checkpoints_round_trip_and_tolerate_other_builds() {
        let saved = Saved {
            v: Saved::VERSION,
            url: "https://example.org/a".into(),
            validator: Some("\"x\"".into()),
        };
        assert_eq!(Saved::decode(&saved.encode()), Some(saved));
        // A later build's extra field is ignored, a missing one defaults.
        let later = br#"{"v":1,"url":"http://a/","validator":null,"extra":[1]}"#;
        assert_eq!(
            Saved::decode(later),
            Some(Saved {
                v: 1,
                url: "http://a/".into(),
                validator: None
            })
        );
        assert_eq!(Saved::decode(br#"{"v":2,"url":"x"}"#), None);
        assert_eq!(Saved::decode(b"garbage"), None);
        assert_eq!(Saved::decode(b"{}"), None, "no version: not ours");
    }
}
