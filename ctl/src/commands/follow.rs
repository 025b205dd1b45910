//! `follow ID`: one job, live, until it finishes. A download draws a
//! progress bar (plain, rate-limited lines when stdout is not a terminal);
//! any other kind prints its state changes and streams its output. Exits
//! like `wait`: 0 only if the job succeeded.
//!
//! Everything comes from the Events stream (and, for output, the Logs
//! stream); nothing is polled.

use std::io::IsTerminal as _;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context as _, Result, bail};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use quern_proto::v1::{
    EventsRequest, EventsResponse, Job, JobState, Progress, StatsRequest, job_result, job_spec,
};
use tonic::Code;

use crate::client::{Client, rpc_error};
use crate::output;

/// How many times the event stream may be resubscribed after the daemon
/// says the events after our position were pruned, as in `wait`.
const MAX_RESYNCS: u32 = 3;

/// Follows job `id` until it finishes, then fails unless it succeeded.
///
/// With `json`, every event (progress included, for a fetch) is printed as
/// a JSON line, and a command's output is not copied: it would not be JSON.
pub async fn run(client: &mut Client, id: u64, json: bool) -> Result<()> {
    let job = super::get_job(client, id).await?;
    let is_fetch = matches!(
        job.spec.as_ref().and_then(|spec| spec.kind.as_ref()),
        Some(job_spec::Kind::Fetch(_))
    );
    let mut view: Box<dyn View> = if json {
        Box::new(JsonView)
    } else if is_fetch && std::io::stdout().is_terminal() {
        Box::new(BarView::new()?)
    } else if is_fetch {
        Box::new(PlainView::to_stdout())
    } else {
        // A command's own output goes to stdout, byte for byte, so that
        // `quernctl follow 5 > out` captures just that; our lines go to
        // stderr.
        Box::new(PlainView::to_stderr())
    };

    let mut events_client = client.clone();
    let events = follow_events(&mut events_client, id, is_fetch, view.as_mut());
    if !is_fetch && !json {
        // The output is streamed alongside the events. Logs with follow
        // ends by itself once the job finishes; either stream failing (the
        // daemon went away) ends the whole follow with its error.
        let mut logs_client = client.clone();
        tokio::try_join!(events, super::logs::run(&mut logs_client, id, true))?;
    } else {
        events.await?;
    }
    view.finish();

    // The outcome comes from Get, as in `wait`, so it is the full job
    // whichever way the stream ended.
    let job = super::get_job(client, id).await?;
    if job.state == JobState::Succeeded as i32 {
        if !json {
            view.line(&succeeded(&job))?;
        }
        return Ok(());
    }
    let state = output::state_name(job.state);
    if job.error.is_empty() {
        bail!("job {id} {state}")
    }
    bail!("job {id} {state}: {}", job.error)
}

/// Shows the job's events as they come, from its current state on, and
/// returns once it is finished.
async fn follow_events(
    client: &mut Client,
    id: u64,
    progress: bool,
    view: &mut dyn View,
) -> Result<()> {
    let mut resyncs = 0;
    // The last state shown, with its attempt, so that a replayed event the
    // Get below already showed is not shown twice.
    let mut shown: Option<(i32, u32)> = None;
    loop {
        // The event position is read before the job is, as in `wait`: a
        // change after the Get is then replayed, not missed.
        let after_seq = client
            .stats(StatsRequest {})
            .await
            .map_err(rpc_error)?
            .into_inner()
            .last_event_seq;
        let job = super::get_job(client, id).await?;
        if shown != Some((job.state, job.attempts)) {
            let event = job_event(&job);
            view.state(&state_line(&event, Some(&job)), &event)?;
            shown = Some((job.state, job.attempts));
        }
        if output::is_terminal(job.state) {
            return Ok(());
        }

        let request = EventsRequest {
            after_seq: Some(after_seq),
            job_id: id,
            progress,
            hosts: false,
            watches: false,
        };
        let mut events = match client.events(request).await {
            Ok(response) => response.into_inner(),
            Err(status) if status.code() == Code::OutOfRange && resyncs < MAX_RESYNCS => {
                resyncs += 1;
                continue;
            }
            Err(status) => return Err(rpc_error(status)),
        };
        loop {
            match events.message().await {
                Ok(Some(event)) => {
                    if let Some(p) = &event.progress {
                        view.progress(p)?;
                        continue;
                    }
                    if shown == Some((event.state, event.attempt)) {
                        continue;
                    }
                    shown = Some((event.state, event.attempt));
                    // A scheduled job says until when and why only in the
                    // job itself, so it is read once per such change.
                    let job = if event.state == JobState::Scheduled as i32 {
                        Some(super::get_job(client, id).await?)
                    } else {
                        None
                    };
                    view.state(&state_line(&event, job.as_ref()), &event)?;
                    if output::is_terminal(event.state) {
                        return Ok(());
                    }
                }
                Ok(None) => bail!(
                    "quernd closed the event stream before job {id} finished; it may be shutting down"
                ),
                Err(status) if status.code() == Code::OutOfRange && resyncs < MAX_RESYNCS => {
                    resyncs += 1;
                    break;
                }
                Err(status) => return Err(rpc_error(status)),
            }
        }
    }
}

/// The job's current state, as the event that would have announced it.
fn job_event(job: &Job) -> EventsResponse {
    EventsResponse {
        seq: 0,
        job_id: job.id,
        state: job.state,
        time: None,
        attempt: job.attempts,
        exit_code: job.exit_code,
        error: job.error.clone(),
        progress: None,
        host: None,
        watch: None,
    }
}

/// A state change in words: "job 4 running, attempt 2", "job 4 scheduled,
/// attempt 1 failed: HTTP 503; next try in 30s: host open after 5
/// failures". `job`, when given, adds when and why a scheduled job waits.
fn state_line(event: &EventsResponse, job: Option<&Job>) -> String {
    let mut line = format!("job {} {}", event.job_id, output::state_name(event.state));
    let scheduled = event.state == JobState::Scheduled as i32;
    if event.attempt > 0 {
        if scheduled {
            line.push_str(&format!(", attempt {} failed", event.attempt));
        } else {
            line.push_str(&format!(", attempt {}", event.attempt));
        }
    }
    if !event.error.is_empty() {
        line.push_str(&format!(": {}", event.error));
    } else if let Some(code) = event.exit_code {
        line.push_str(&format!(": exit {code}"));
    }
    if let Some(job) = job.filter(|_| scheduled) {
        if let Some(at) = job.run_at.and_then(output::system_time) {
            line.push_str(&format!(
                "; next try {}",
                output::relative(at, SystemTime::now())
            ));
        }
        if !job.wait_reason.is_empty() {
            line.push_str(&format!(": {}", job.wait_reason));
        }
    }
    line
}

/// The closing line of a job that succeeded: for a download, what it got.
fn succeeded(job: &Job) -> String {
    let Some(job_result::Kind::Fetch(r)) = job.result.as_ref().and_then(|r| r.kind.as_ref()) else {
        return format!("job {} succeeded", job.id);
    };
    if r.unchanged {
        return format!("job {} succeeded: {} unchanged", job.id, r.final_url);
    }
    let mut line = format!(
        "job {} succeeded: {} from {}",
        job.id,
        output::human_bytes(r.bytes),
        r.final_url
    );
    if let Some(time) = r.transfer_time {
        line.push_str(&format!(" in {}", output::human_duration(time)));
    }
    if r.resumed_bytes > 0 {
        line.push_str(&format!(
            " ({} resumed)",
            output::human_bytes(r.resumed_bytes)
        ));
    }
    line
}

/// Where `follow` shows what happens.
trait View {
    /// A state change, already in words.
    fn state(&mut self, line: &str, event: &EventsResponse) -> Result<()>;
    /// A progress update.
    fn progress(&mut self, p: &Progress) -> Result<()>;
    /// A closing line.
    fn line(&mut self, line: &str) -> Result<()>;
    /// The job is finished: take the bar, if any, off the screen.
    fn finish(&mut self) {}
}

/// Events as JSON lines, as `events --json` prints them.
struct JsonView;

impl View for JsonView {
    fn state(&mut self, _line: &str, event: &EventsResponse) -> Result<()> {
        Ok(output::json_line(&output::event_json(event))?)
    }
    fn progress(&mut self, p: &Progress) -> Result<()> {
        Ok(output::json_line(
            &serde_json::json!({ "progress": output::progress_json(p) }),
        )?)
    }
    fn line(&mut self, _line: &str) -> Result<()> {
        Ok(())
    }
}

/// Plain lines, for a pipe or a log file: every state change, and progress
/// at a low rate (see [`Throttle`]).
struct PlainView {
    stderr: bool,
    throttle: Throttle,
}

impl PlainView {
    fn to_stdout() -> Self {
        PlainView {
            stderr: false,
            throttle: Throttle::default(),
        }
    }

    fn to_stderr() -> Self {
        PlainView {
            stderr: true,
            throttle: Throttle::default(),
        }
    }
}

impl View for PlainView {
    fn state(&mut self, line: &str, _event: &EventsResponse) -> Result<()> {
        self.line(line)
    }
    fn progress(&mut self, p: &Progress) -> Result<()> {
        if self.throttle.due(Instant::now(), p.done, p.total) {
            self.line(&output::progress(p))?;
        }
        Ok(())
    }
    fn line(&mut self, line: &str) -> Result<()> {
        if self.stderr {
            eprintln!("quernctl: {line}");
            Ok(())
        } else {
            Ok(output::line(line)?)
        }
    }
}

/// When a plain progress line is due: at most one a second, and then only
/// once the download has crossed another tenth of its total, or, while the
/// total is unknown, 10 s after the last line. A pipe gets a dozen lines
/// for a download, not thousands.
#[derive(Debug, Default)]
struct Throttle {
    /// When the last line was printed, and the tenth it showed.
    last: Option<(Instant, u64)>,
}

impl Throttle {
    const MIN_GAP: Duration = Duration::from_secs(1);
    const UNKNOWN_TOTAL_GAP: Duration = Duration::from_secs(10);

    fn due(&mut self, now: Instant, done: u64, total: u64) -> bool {
        let tenth = if total > 0 {
            // u128, so that done * 10 cannot overflow.
            u64::try_from(u128::from(done.min(total)) * 10 / u128::from(total)).unwrap_or(10)
        } else {
            0
        };
        let due = match self.last {
            None => true,
            Some((at, _)) if now.saturating_duration_since(at) < Self::MIN_GAP => false,
            Some((_, last_tenth)) if total > 0 => tenth > last_tenth,
            Some((at, _)) => now.saturating_duration_since(at) >= Self::UNKNOWN_TOTAL_GAP,
        };
        if due {
            self.last = Some((now, tenth));
        }
        due
    }
}

/// An indicatif bar on the terminal: bytes done of the total, the speed the
/// daemon measured, and the time left at that speed. State changes are
/// printed above it.
struct BarView {
    bar: ProgressBar,
    known: ProgressStyle,
    unknown: ProgressStyle,
    /// Whether the bar currently has a length (the `known` style).
    has_total: bool,
}

impl BarView {
    fn new() -> Result<Self> {
        // The templates are constants; an error here is a bug in them.
        let known = ProgressStyle::with_template(
            "{spinner} {decimal_bytes}/{decimal_total_bytes} [{wide_bar}] {percent}% {msg}",
        )
        .context("the progress bar template is wrong")?
        .progress_chars("=> ");
        let unknown = ProgressStyle::with_template("{spinner} {decimal_bytes} {msg}")
            .context("the progress bar template is wrong")?;
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stdout());
        bar.set_style(unknown.clone());
        // The spinner turns while waiting for a queued job or a slow server,
        // so the bar shows that quernctl is alive.
        bar.enable_steady_tick(Duration::from_millis(200));
        Ok(BarView {
            bar,
            known,
            unknown,
            has_total: false,
        })
    }
}

impl View for BarView {
    fn state(&mut self, line: &str, _event: &EventsResponse) -> Result<()> {
        self.bar.println(line);
        Ok(())
    }
    fn progress(&mut self, p: &Progress) -> Result<()> {
        match (p.total > 0, self.has_total) {
            (true, false) => self.bar.set_style(self.known.clone()),
            (false, true) => {
                self.bar.set_style(self.unknown.clone());
                self.bar.unset_length();
            }
            _ => {}
        }
        self.has_total = p.total > 0;
        if self.has_total {
            self.bar.set_length(p.total);
        }
        self.bar.set_position(p.done);
        self.bar.set_message(speed(p));
        Ok(())
    }
    fn line(&mut self, line: &str) -> Result<()> {
        self.bar.println(line);
        Ok(())
    }
    fn finish(&mut self) {
        self.bar.finish_and_clear();
    }
}

/// The speed and, with a total, the time left at that speed: "1.2 MB/s,
/// 3m left". The daemon's rate is used rather than indicatif's own
/// estimate, so that the bar and `quernctl get` agree.
fn speed(p: &Progress) -> String {
    if p.rate == 0 {
        return String::new();
    }
    let mut text = format!("{}/s", output::human_bytes(p.rate));
    if p.total > p.done {
        let left = Duration::from_secs((p.total - p.done).div_ceil(p.rate));
        text.push_str(&format!(", {} left", humantime::format_duration(left)));
    }
    text
}

#[cfg(test)]
mod tests {
    use quern_proto::v1::{FetchResult, JobResult};

    use super::*;

    #[test]
    fn plain_progress_is_at_most_one_line_a_second_and_one_per_tenth() {
        let start = Instant::now();
        let at = |ms| start + Duration::from_millis(ms);
        let mut t = Throttle::default();
        // The first update is shown.
        assert!(t.due(at(0), 0, 1000));
        // Within a second, nothing, even past a tenth.
        assert!(!t.due(at(500), 500, 1000));
        // After a second, only once another tenth was crossed.
        assert!(!t.due(at(1500), 50, 1000));
        assert!(t.due(at(1600), 150, 1000));
        assert!(!t.due(at(5000), 199, 1000));
        assert!(t.due(at(5000), 200, 1000));
        // Done is shown, once.
        assert!(t.due(at(7000), 1000, 1000));
        assert!(!t.due(at(9000), 1000, 1000));
    }

    #[test]
    fn plain_progress_without_a_total_is_one_line_per_ten_seconds() {
        let start = Instant::now();
        let at = |s| start + Duration::from_secs(s);
        let mut t = Throttle::default();
        assert!(t.due(at(0), 10, 0));
        assert!(!t.due(at(5), 10_000, 0));
        assert!(t.due(at(10), 20_000, 0));
        assert!(!t.due(at(19), 30_000, 0));
        assert!(t.due(at(20), 30_000, 0));
    }

    #[test]
    fn speed_gives_the_time_left_at_the_current_rate() {
        let p = |done, total, rate| Progress {
            phase: "download".into(),
            done,
            total,
            unit: "bytes".into(),
            rate,
        };
        assert_eq!(speed(&p(0, 1000, 0)), "");
        assert_eq!(speed(&p(0, 0, 2_000_000)), "2.0 MB/s");
        assert_eq!(
            speed(&p(1_000_000, 61_000_000, 1_000_000)),
            "1.0 MB/s, 1m left"
        );
        assert_eq!(speed(&p(500, 1000, 1000)), "1.0 kB/s, 1s left");
        assert_eq!(speed(&p(0, 1001, 500)), "500 B/s, 3s left");
    }

    #[test]
    fn state_lines_say_what_happened() {
        let event = |state: JobState, attempt, exit_code, error: &str| EventsResponse {
            job_id: 4,
            state: state as i32,
            attempt,
            exit_code,
            error: error.into(),
            ..EventsResponse::default()
        };
        assert_eq!(
            state_line(&event(JobState::Queued, 0, None, ""), None),
            "job 4 queued"
        );
        assert_eq!(
            state_line(&event(JobState::Running, 2, None, ""), None),
            "job 4 running, attempt 2"
        );
        assert_eq!(
            state_line(&event(JobState::Failed, 1, Some(3), ""), None),
            "job 4 failed, attempt 1: exit 3"
        );
        let waiting = Job {
            run_at: Some((SystemTime::now() + Duration::from_secs(90)).into()),
            wait_reason: "host open after 5 failures".into(),
            ..Job::default()
        };
        let line = state_line(
            &event(JobState::Scheduled, 1, None, "HTTP 503 Service Unavailable"),
            Some(&waiting),
        );
        // The relative time depends on when the test runs; its shape does not.
        assert!(
            line.starts_with(
                "job 4 scheduled, attempt 1 failed: HTTP 503 Service Unavailable; next try in 1m"
            ) && line.ends_with(": host open after 5 failures"),
            "{line}"
        );
    }

    #[test]
    fn a_successful_download_closes_with_what_it_got() {
        let mut job = Job {
            id: 3,
            state: JobState::Succeeded as i32,
            result: Some(JobResult {
                kind: Some(job_result::Kind::Fetch(FetchResult {
                    final_url: "https://example.org/f".into(),
                    status: 200,
                    bytes: 2_500_000,
                    sha256: "ab".repeat(32),
                    unchanged: false,
                    transfer_time: Some(prost_types::Duration {
                        seconds: 2,
                        nanos: 0,
                    }),
                    resumed_bytes: 1_000_000,
                })),
            }),
            ..Job::default()
        };
        assert_eq!(
            succeeded(&job),
            "job 3 succeeded: 2.5 MB from https://example.org/f in 2s (1.0 MB resumed)"
        );
        job.result = None;
        assert_eq!(succeeded(&job), "job 3 succeeded");
    }
}
