//! Which paths under a rule's root it covers: its `include` and `exclude`
//! globs (globset), whether it descends, and whether ignore files
//! (`.gitignore`, `.ignore`, `.git/info/exclude`, through the `ignore`
//! crate's walker) apply. `.git/` itself is always left out.

use std::path::Path;

use globset::{Glob, GlobSet, GlobSetBuilder};

/// What a rule covers, as checked at `Add`.
#[derive(Debug, Clone)]
pub struct Filter {
    include: Option<GlobSet>,
    exclude: GlobSet,
    /// Descend below the root.
    pub recursive: bool,
    /// Respect `.gitignore`, `.ignore` and `.git/info/exclude`.
    pub ignore_files: bool,
}

/// A glob that does not parse: which field, which glob, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {glob:?} is not a glob: {reason}; fix the pattern (e.g. \"**/*.rs\")")]
pub struct BadGlob {
    /// `include` or `exclude`.
    pub field: &'static str,
    pub glob: String,
    pub reason: String,
}

fn set(field: &'static str, globs: &[String]) -> Result<GlobSet, BadGlob> {
    let mut b = GlobSetBuilder::new();
    for g in globs {
        let glob = Glob::new(g).map_err(|e| BadGlob {
            field,
            glob: g.clone(),
            reason: e.kind().to_string(),
        })?;
        b.add(glob);
    }
    b.build().map_err(|e| BadGlob {
        field,
        glob: globs.join(", "),
        reason: e.to_string(),
    })
}

impl Filter {
    /// A filter from a rule's fields. An empty `include` covers every file.
    /// Globs match paths relative to the root, such as `src/main.rs`.
    pub fn new(
        include: &[String],
        exclude: &[String],
        recursive: bool,
        ignore_files: bool,
    ) -> Result<Filter, BadGlob> {
        Ok(Filter {
            include: if include.is_empty() {
                None
            } else {
                Some(set("include", include)?)
            },
            exclude: set("exclude", exclude)?,
            recursive,
            ignore_files,
        })
    }

    /// Whether a directory at `rel` (relative to the root) is walked and
    /// watched: not `.git`, and not excluded. Excluded directories are
    /// never entered, so nothing below them costs a watch.
    pub fn enters(&self, rel: &Path) -> bool {
        if rel.file_name().is_some_and(|n| n == ".git") {
            return false;
        }
        !self.exclude.is_match(rel)
    }

    /// Whether a change to the file at `rel` (relative to the root)
    /// counts: included (or no include given) and not excluded. Ignore
    /// files are applied by the walk, not here.
    pub fn covers(&self, rel: &Path) -> bool {
        if rel.components().any(|c| c.as_os_str() == ".git") {
            return false;
        }
        if self.exclude.is_match(rel) {
            return false;
        }
        self.include.as_ref().is_none_or(|i| i.is_match(rel))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn globs(g: &[&str]) -> Vec<String> {
        g.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn include_and_exclude_match_relative_paths() {
        let f = Filter::new(&globs(&["**/*.rs"]), &globs(&["target/**"]), true, true).unwrap();
        assert!(f.covers(Path::new("src/main.rs")));
        assert!(f.covers(Path::new("main.rs")));
        assert!(!f.covers(Path::new("README.md")), "not included");
        assert!(!f.covers(Path::new("target/debug/x.rs")), "excluded");
        assert!(!f.covers(Path::new(".git/x.rs")), ".git is never covered");
        assert!(f.enters(Path::new("src")));
        assert!(!f.enters(Path::new(".git")));
        assert!(!f.enters(Path::new("sub/.git")));
    }

    #[test]
    fn no_include_covers_everything_not_excluded() {
        let f = Filter::new(&[], &globs(&["*.tmp"]), true, true).unwrap();
        assert!(f.covers(Path::new("a/b/c.txt")));
        assert!(!f.covers(Path::new("c.tmp")));
    }

    #[test]
    fn a_bad_glob_names_its_field_and_the_fix() {
        let e = Filter::new(&globs(&["ok/*", "a[b"]), &[], true, true).unwrap_err();
        assert_eq!(e.field, "include");
        assert_eq!(e.glob, "a[b");
        let msg = e.to_string();
        assert!(msg.starts_with("include: \"a[b\" is not a glob"), "{msg}");
        assert!(msg.contains("fix the pattern"), "{msg}");
        let e = Filter::new(&[], &globs(&["{a"]), true, true).unwrap_err();
        assert_eq!(e.field, "exclude");
    }
}
