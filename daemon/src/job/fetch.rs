//! The fetch kind's spec and result: an HTTP request whose answer is saved
//! to a file (a download), or sent and discarded (a webhook). Pure data and
//! the rules every fetch spec must meet; the work is in `runner/fetch`.

use std::fmt;

/// The most redirects a fetch follows.
pub const MAX_REDIRECTS: usize = 10;

/// Download `url` to `dest`, or send a request.
#[derive(Clone, Debug, PartialEq)]
pub struct FetchSpec {
    /// An absolute http or https URL, with a host.
    pub url: String,
    /// The absolute path the response body is saved to. Required for GET;
    /// without it, another method's response body is discarded.
    pub dest: Option<String>,
    /// The expected SHA-256 of the body, as 64 lowercase hex digits.
    pub sha256: Option<String>,
    /// Extra request headers, in order; a name may repeat.
    pub headers: Vec<(String, String)>,
    /// Fail a body longer than this many bytes (at least 1).
    pub max_bytes: Option<u64>,
    /// What to do when `dest` exists already.
    pub overwrite: Overwrite,
    /// The request method.
    pub method: HttpMethod,
    /// An absolute path whose content is sent as the request body; not
    /// with GET.
    pub body_file: Option<String>,
    /// Retry a non-idempotent request (POST, PATCH) even after it was sent.
    pub retry_unsafe: bool,
}

/// What a fetch does when its `dest` exists already.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Overwrite {
    /// Replace it, atomically, once the new body is complete and verified.
    #[default]
    Replace,
    /// Leave it, and succeed at once without a request (GET only).
    Skip,
    /// Fail without a request.
    Error,
}

impl Overwrite {
    /// Every mode, for parsing and messages.
    pub const ALL: [Overwrite; 3] = [Overwrite::Replace, Overwrite::Skip, Overwrite::Error];

    /// The mode's name, as the CLI and messages spell it.
    pub fn name(self) -> &'static str {
        match self {
            Overwrite::Replace => "replace",
            Overwrite::Skip => "skip",
            Overwrite::Error => "error",
        }
    }
}

/// The request methods a fetch may use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum HttpMethod {
    /// Download; the only method that resumes, revalidates or skips.
    #[default]
    Get,
    /// Not idempotent: not retried after it was sent unless asked.
    Post,
    /// Idempotent.
    Put,
    /// Not idempotent: not retried after it was sent unless asked.
    Patch,
    /// Idempotent.
    Delete,
}

impl HttpMethod {
    /// Every method, for parsing and messages.
    pub const ALL: [HttpMethod; 5] = [
        HttpMethod::Get,
        HttpMethod::Post,
        HttpMethod::Put,
        HttpMethod::Patch,
        HttpMethod::Delete,
    ];

    /// The method as it goes on the wire.
    pub fn name(self) -> &'static str {
        match self {
            HttpMethod::Get => "GET",
            HttpMethod::Post => "POST",
            HttpMethod::Put => "PUT",
            HttpMethod::Patch => "PATCH",
            HttpMethod::Delete => "DELETE",
        }
    }

    /// The method named `name`, in any case.
    pub fn from_name(name: &str) -> Option<HttpMethod> {
        HttpMethod::ALL
            .into_iter()
            .find(|m| m.name().eq_ignore_ascii_case(name))
    }

    /// Whether sending the request twice does what sending it once does
    /// (RFC 9110, 9.2.2), so that it may be retried after it was sent.
    pub fn idempotent(self) -> bool {
        !matches!(self, HttpMethod::Post | HttpMethod::Patch)
    }

    /// The methods' names, for messages.
    pub fn names() -> String {
        HttpMethod::ALL.map(HttpMethod::name).join(", ")
    }
}

impl fmt::Display for HttpMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What a finished fetch reports.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FetchResult {
    /// The URL that answered, after redirects.
    pub final_url: String,
    /// The HTTP status of the final answer (0 when no request was made:
    /// `overwrite: skip` found the file).
    pub status: u32,
    /// Bytes of the body in `dest` (or received and discarded), resumed
    /// bytes included.
    pub bytes: u64,
    /// The SHA-256 of the body, as 64 lowercase hex digits; empty when
    /// nothing was downloaded (unchanged or skipped).
    pub sha256: String,
    /// The server said the file had not changed since the last fetch
    /// (304), or `overwrite: skip` found it: `dest` was not touched.
    pub unchanged: bool,
    /// Time spent on the request and the body in the attempt that
    /// succeeded, in microseconds.
    pub transfer_micros: u64,
    /// Bytes of the body taken from a `.part` file an earlier attempt
    /// left, rather than downloaded by the attempt that succeeded.
    pub resumed_bytes: u64,
}

impl FetchSpec {
    /// See [`super::JobSpec::check`]: what can be decided from the spec
    /// alone. Whether `dest` is usable is checked against the file system
    /// when the spec is submitted, and again when it runs.
    pub(super) fn check(&self) -> Result<(), (&'static str, String)> {
        check_url(&self.url).map_err(|why| (".fetch.url", why))?;
        if let Some(dest) = &self.dest {
            if !dest.starts_with('/') {
                return Err((
                    ".fetch.dest",
                    format!(
                        "{dest:?} is relative; give an absolute path (quernctl resolves one against its working directory)"
                    ),
                ));
            }
            if dest.ends_with('/') {
                return Err((
                    ".fetch.dest",
                    format!("{dest:?} names a directory; give the path of the file to write"),
                ));
            }
        } else if self.method == HttpMethod::Get {
            return Err((
                ".fetch.dest",
                "is required for GET; give the absolute path to save the body to".into(),
            ));
        }
        if let Some(sum) = &self.sha256
            && !is_sha256_hex(sum)
        {
            return Err((
                ".fetch.sha256",
                format!("{sum:?} is not a SHA-256; give 64 hex digits, as sha256sum prints them"),
            ));
        }
        for (name, value) in &self.headers {
            if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                return Err((
                    ".fetch.headers",
                    format!(
                        "{name:?} is not a valid header name; use letters, digits and !#$%&'*+-.^_`|~ only"
                    ),
                ));
            }
            if http::HeaderValue::from_str(value).is_err() {
                return Err((
                    ".fetch.headers",
                    format!(
                        "the value of {name:?} is not a valid header value; remove control characters such as newlines"
                    ),
                ));
            }
        }
        if self.max_bytes == Some(0) {
            return Err((
                ".fetch.max_bytes",
                "is 0; give a positive limit, or leave it unset for none".into(),
            ));
        }
        if let Some(body) = &self.body_file {
            if self.method == HttpMethod::Get {
                return Err((
                    ".fetch.body_file",
                    "is not allowed with GET; use POST, PUT, PATCH or DELETE to send a body".into(),
                ));
            }
            if !body.starts_with('/') {
                return Err((
                    ".fetch.body_file",
                    format!("{body:?} is relative; give an absolute path"),
                ));
            }
        }
        if self.method != HttpMethod::Get && self.overwrite == Overwrite::Skip {
            return Err((
                ".fetch.overwrite",
                format!("skip applies to GET only; a {} is always sent", self.method),
            ));
        }
        Ok(())
    }
}

impl FetchSpec {
    /// The host its requests are limited by: `host:port`, the port made
    /// explicit. A URL that does not parse (which `check` refuses, so
    /// only a damaged record) is its own key, so it still has one.
    pub fn host_key(&self) -> String {
        match url::Url::parse(&self.url) {
            Ok(u) => host_key(&u),
            Err(_) => self.url.clone(),
        }
    }
}

#[cfg(test)]
impl FetchSpec {
    /// For tests: a GET of `url` to `dest`, with no options.
    pub(crate) fn for_tests(url: &str, dest: &str) -> FetchSpec {
        FetchSpec {
            url: url.into(),
            dest: Some(dest.into()),
            sha256: None,
            headers: vec![],
            max_bytes: None,
            overwrite: Overwrite::Replace,
            method: HttpMethod::Get,
            body_file: None,
            retry_unsafe: false,
        }
    }
}

/// The key a URL's host is limited by: its host and port, the port made
/// explicit (`example.org:443`).
pub fn host_key(url: &url::Url) -> String {
    let host = url.host_str().unwrap_or_default();
    match url.port_or_known_default() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_string(),
    }
}

/// Checks that `url` is an absolute http or https URL with a host; the
/// reason otherwise.
pub fn check_url(url: &str) -> Result<url::Url, String> {
    let parsed = url::Url::parse(url).map_err(|e| {
        format!(
            "{url:?} is not a URL ({e}); give an absolute one, such as https://example.org/file"
        )
    })?;
    match parsed.scheme() {
        "http" | "https" => {}
        other => {
            return Err(format!(
                "{url:?} has scheme {other:?}; only http and https can be fetched"
            ));
        }
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(format!(
            "{url:?} has no host; give one, such as https://example.org/file"
        ));
    }
    Ok(parsed)
}

/// Whether `s` is 64 hex digits.
pub fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> FetchSpec {
        FetchSpec::for_tests("https://example.org/a.tar", "/tmp/a.tar")
    }

    #[test]
    fn a_plain_download_passes() {
        assert_eq!(spec().check(), Ok(()));
        let mut s = spec();
        s.sha256 = Some("AB".repeat(32));
        s.headers = vec![("Authorization".into(), "Bearer x".into())];
        s.max_bytes = Some(1);
        assert_eq!(s.check(), Ok(()));
    }

    /// How to spoil a spec, what the error must name, and the fix it gives.
    type Case = (fn(&mut FetchSpec), &'static str, &'static str);

    #[test]
    fn each_bad_field_is_named_with_its_fix() {
        let cases: Vec<Case> = vec![
            (
                |s| s.url = "ftp://example.org/x".into(),
                ".fetch.url",
                "only http and https",
            ),
            (|s| s.url = "not a url".into(), ".fetch.url", "not a URL"),
            (|s| s.url = "http://".into(), ".fetch.url", "host"),
            (|s| s.dest = Some("rel/x".into()), ".fetch.dest", "relative"),
            (
                |s| s.dest = Some("/tmp/".into()),
                ".fetch.dest",
                "directory",
            ),
            (|s| s.dest = None, ".fetch.dest", "required for GET"),
            (|s| s.sha256 = Some("abc".into()), ".fetch.sha256", "64 hex"),
            (
                |s| s.sha256 = Some("g".repeat(64)),
                ".fetch.sha256",
                "64 hex",
            ),
            (
                |s| s.headers = vec![("bad name".into(), "v".into())],
                ".fetch.headers",
                "header name",
            ),
            (
                |s| s.headers = vec![("X".into(), "a\nb".into())],
                ".fetch.headers",
                "header value",
            ),
            (|s| s.max_bytes = Some(0), ".fetch.max_bytes", "positive"),
            (
                |s| s.body_file = Some("/tmp/b".into()),
                ".fetch.body_file",
                "not allowed with GET",
            ),
            (
                |s| {
                    s.method = HttpMethod::Post;
                    s.body_file = Some("b".into());
                },
                ".fetch.body_file",
                "relative",
            ),
            (
                |s| {
                    s.method = HttpMethod::Put;
                    s.overwrite = Overwrite::Skip;
                },
                ".fetch.overwrite",
                "GET only",
            ),
        ];
        for (change, field, why) in cases {
            let mut s = spec();
            change(&mut s);
            let (f, msg) = s.check().expect_err(field);
            assert_eq!(f, field, "{msg}");
            assert!(msg.contains(why), "{field}: {msg}");
        }
    }

    #[test]
    fn other_methods_may_discard_the_body() {
        let mut s = spec();
        s.method = HttpMethod::Post;
        s.dest = None;
        s.body_file = Some("/tmp/body".into());
        assert_eq!(s.check(), Ok(()));
    }

    #[test]
    fn methods_parse_in_any_case_and_know_if_they_repeat_safely() {
        assert_eq!(HttpMethod::from_name("put"), Some(HttpMethod::Put));
        assert_eq!(HttpMethod::from_name("HEAD"), None);
        assert!(HttpMethod::Get.idempotent() && HttpMethod::Delete.idempotent());
        assert!(!HttpMethod::Post.idempotent() && !HttpMethod::Patch.idempotent());
    }
}
