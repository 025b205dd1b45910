//! The `[git]` table: how large a git job's result may be before it goes
//! to a file instead of the store.

use serde::Deserialize;

use super::ConfigError;

/// Settings of the git kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GitConfig {
    /// A result whose JSON is larger than this many bytes is written to
    /// `<state_dir>/git/results/<job id>.json` (owner-only), and the job
    /// records its path and size instead: the store, and every `Get`,
    /// stays small.
    pub max_result_bytes: u64,
}

impl Default for GitConfig {
    fn default() -> GitConfig {
        GitConfig {
            max_result_bytes: 4 << 20,
        }
    }
}

/// The `[git]` table of the file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GitFile {
    /// See [`GitConfig::max_result_bytes`].
    pub max_result_bytes: Option<u64>,
}

/// The `[git]` table over the defaults.
pub fn load(file: GitFile) -> Result<GitConfig, ConfigError> {
    let d = GitConfig::default();
    let max_result_bytes = file.max_result_bytes.unwrap_or(d.max_result_bytes);
    // A gRPC message is at most 4 MiB by default on the client side (tonic,
    // grpcio); a result kept in the record must fit in one with room for
    // the rest of the job.
    if max_result_bytes == 0 || max_result_bytes > 4 << 20 {
        return Err(ConfigError::Invalid {
            key: "git.max_result_bytes",
            value: max_result_bytes.to_string(),
            reason: "must be between 1 and 4194304 (4 MiB, a gRPC message's usual limit)",
        });
    }
    Ok(GitConfig { max_result_bytes })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_limits() {
        assert_eq!(
            load(GitFile::default()).unwrap().max_result_bytes,
            4_194_304
        );
        let small = load(GitFile {
            max_result_bytes: Some(1000),
        })
        .unwrap();
        assert_eq!(small.max_result_bytes, 1000);
        for bad in [0, (4 << 20) + 1] {
            let err = load(GitFile {
                max_result_bytes: Some(bad),
            })
            .unwrap_err()
            .to_string();
            assert!(err.contains("git.max_result_bytes"), "{err}");
        }
    }
}
