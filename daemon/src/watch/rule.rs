//! A watch rule as quernd keeps it, and the checks every rule passes before
//! it is stored, whoever made it: the API's `Add` converts its request to a
//! [`RuleSpec`] and calls [`RuleSpec::check`], which names the field at
//! fault and the fix, as Submit does for jobs.

use std::path::PathBuf;
use std::time::Duration;

use super::filter::Filter;
use super::follow::Reason;
use crate::job::{JobId, JobSpec, Micros};

/// A rule's id: unique in the store, never reused.
pub type RuleId = u64;

/// How many of a rule's newest job ids its record keeps.
pub const RECENT_JOBS: usize = 10;

/// The label of every job a rule makes; its value is the rule's id.
pub const WATCH_LABEL: &str = "quern.watch";

/// The variable that gives an exec job of a rule the file listing the
/// paths that changed.
pub const CHANGED_PATHS_ENV: &str = "QUERN_CHANGED_PATHS_FILE";

/// The directory of the state dir that holds those files. Retention
/// deletes a pruned job's file only inside it: the variable is the job's
/// environment, which a user may set to any path.
pub const WATCH_DIR: &str = "watch";

/// A rule as the store keeps it: what it is, and what it has done.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub id: RuleId,
    /// Who added it; its jobs are theirs.
    pub owner_uid: u32,
    pub spec: RuleSpec,
    pub created_at: Micros,
    /// Paused by a request.
    pub paused: bool,
    /// How many jobs it has made.
    pub jobs_made: u64,
    /// Its latest trigger.
    pub last_trigger: Option<TriggerRecord>,
    /// Its newest jobs' ids, newest first, at most [`RECENT_JOBS`].
    pub recent_jobs: Vec<JobId>,
}

/// One trigger of a rule, as recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TriggerRecord {
    /// When its changes settled.
    pub at: Micros,
    pub reason: Reason,
    /// How many paths changed.
    pub paths: u64,
    /// The job it made, if it made one.
    pub job_id: Option<JobId>,
}

/// What a rule does when it triggers while its previous job is unfinished.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnBusy {
    /// At most one job waits behind the running one, with the union of
    /// the changed paths.
    #[default]
    Coalesce,
    /// Every settle makes a job.
    Queue,
    /// Cancel the running job, then submit a new one.
    Restart,
    /// Make no job.
    Skip,
}

impl OnBusy {
    /// The names the API and quernctl take.
    pub const NAMES: [&'static str; 4] = ["coalesce", "queue", "restart", "skip"];

    /// Parses one of [`OnBusy::NAMES`].
    pub fn parse(name: &str) -> Result<OnBusy, String> {
        match name {
            "coalesce" => Ok(OnBusy::Coalesce),
            "queue" => Ok(OnBusy::Queue),
            "restart" => Ok(OnBusy::Restart),
            "skip" => Ok(OnBusy::Skip),
            other => Err(format!(
                "is {other:?}; give one of {}",
                OnBusy::NAMES.join(", ")
            )),
        }
    }
}

/// The default `debounce`.
pub const DEFAULT_DEBOUNCE: Duration = Duration::from_millis(100);
/// The default `max_wait`.
pub const DEFAULT_MAX_WAIT: Duration = Duration::from_secs(10);

/// A rule: when files under `root` change and settle, submit `job`.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleSpec {
    /// An existing directory, absolute.
    pub root: PathBuf,
    pub recursive: bool,
    pub include: Vec<String>,
    pub exclude: Vec<String>,
    /// Ignore `.gitignore`, `.ignore` and `.git/info/exclude`.
    pub no_ignore_files: bool,
    pub debounce: Duration,
    pub max_wait: Duration,
    pub on_busy: OnBusy,
    /// The template of the jobs it makes.
    pub job: JobSpec,
}

impl RuleSpec {
    /// The rules every rule must meet. Returns the field and the reason;
    /// a field of the job template is named `job.` and its own field.
    pub fn check(&self) -> Result<Filter, (String, String)> {
        let bad = |field: &str, reason: String| Err((field.to_string(), reason));
        if !self.root.is_absolute() {
            return bad(
                "root",
                format!(
                    "{} is relative; give an absolute path (quernctl resolves it against its cwd)",
                    self.root.display()
                ),
            );
        }
        match std::fs::metadata(&self.root) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return bad(
                    "root",
                    format!(
                        "{} is not a directory; give the directory to watch",
                        self.root.display()
                    ),
                );
            }
            Err(e) => {
                return bad(
                    "root",
                    format!(
                        "{} cannot be read ({e}); create it or fix the path",
                        self.root.display()
                    ),
                );
            }
        }
        let filter = match Filter::new(
            &self.include,
            &self.exclude,
            self.recursive,
            !self.no_ignore_files,
        ) {
            Ok(f) => f,
            Err(e) => return bad(e.field, e.to_string()),
        };
        if self.debounce.is_zero() {
            return bad(
                "debounce",
                "must be positive; give at least 1ms (the default is 100ms)".into(),
            );
        }
        if self.max_wait < self.debounce {
            return bad(
                "max_wait",
                format!(
                    "is {}, below the debounce of {}; give at least the debounce",
                    humantime::format_duration(self.max_wait),
                    humantime::format_duration(self.debounce)
                ),
            );
        }
        if let Err((field, reason)) = self.job.check() {
            return bad(&format!("job{field}"), reason);
        }
        Ok(filter)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(root: PathBuf) -> RuleSpec {
        RuleSpec {
            root,
            recursive: true,
            include: vec![],
            exclude: vec![],
            no_ignore_files: false,
            debounce: DEFAULT_DEBOUNCE,
            max_wait: DEFAULT_MAX_WAIT,
            on_busy: OnBusy::default(),
            job: JobSpec::exec_for_tests(&["make"]),
        }
    }

    #[test]
    fn a_good_rule_passes() {
        let dir = tempfile::tempdir().unwrap();
        let f = rule(dir.path().to_path_buf()).check().unwrap();
        assert!(f.recursive && f.ignore_files);
    }

    #[test]
    fn each_bad_field_is_named_with_its_fix() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("file");
        std::fs::write(&file, "x").unwrap();
        type Spoil = Box<dyn Fn(&mut RuleSpec)>;
        let cases: Vec<(Spoil, &str, &str)> = vec![
            (
                Box::new(|r| r.root = "rel/dir".into()),
                "root",
                "give an absolute path",
            ),
            (
                Box::new(|r| r.root = r.root.join("missing")),
                "root",
                "create it or fix the path",
            ),
            (
                Box::new(move |r| r.root = file.clone()),
                "root",
                "is not a directory",
            ),
            (
                Box::new(|r| r.include = vec!["a[".into()]),
                "include",
                "fix the pattern",
            ),
            (
                Box::new(|r| r.exclude = vec!["{x".into()]),
                "exclude",
                "fix the pattern",
            ),
            (
                Box::new(|r| r.debounce = Duration::ZERO),
                "debounce",
                "must be positive",
            ),
            (
                Box::new(|r| r.max_wait = Duration::from_millis(50)),
                "max_wait",
                "below the debounce of 100ms",
            ),
            (
                Box::new(|r| r.job.max_attempts = 0),
                "job.max_attempts",
                "give 1 to 100 attempts",
            ),
        ];
        for (spoil, field, fix) in cases {
            let mut r = rule(dir.path().to_path_buf());
            spoil(&mut r);
            let (f, reason) = r.check().unwrap_err();
            assert_eq!(f, field, "{reason}");
            assert!(reason.contains(fix), "{field}: {reason}");
        }
    }

    #[test]
    fn on_busy_names_parse_and_others_are_refused() {
        for name in OnBusy::NAMES {
            assert!(OnBusy::parse(name).is_ok(), "{name}");
        }
        assert_eq!(OnBusy::parse("coalesce"), Ok(OnBusy::Coalesce));
        let e = OnBusy::parse("later").unwrap_err();
        assert!(e.contains("coalesce, queue, restart, skip"), "{e}");
    }
}
