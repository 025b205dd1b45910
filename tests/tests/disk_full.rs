//! A full disk under the state dir: a Submit that cannot be made durable is
//! refused with RESOURCE_EXHAUSTED, naming the state dir, and never
//! acknowledged; reads go on; once space is freed, Submits succeed again
//! with no restart, and every job acknowledged before stays intact.
//!
//! Needs root, to mount a small tmpfs on the state dir; CI runs as root.

use anyhow::{Context as _, Result, ensure};
use quern_proto::v1::{ListRequest, SubmitRequest};
use quern_tests::{TestDaemon, exec_spec, get};
use tonic::Code;

/// Unmounts the tmpfs when the test ends, however it ends.
struct Mount(std::path::PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

#[tokio::test]
async fn a_full_disk_refuses_submits_by_name_and_loses_nothing_acknowledged() -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: mounting a tmpfs for the state dir needs root (CI runs as root)");
        return Ok(());
    }
    let prepared = TestDaemon::builder().prepare()?;
    let state = prepared.state_dir().to_path_buf();
    nix::mount::mount(
        Some("tmpfs"),
        &state,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        Some("size=8m"),
    )
    .context("mounting a tmpfs on the state dir")?;
    let _mount = Mount(state.clone());
    // Room to free later, as a user would.
    let filler = state.join("filler");
    std::fs::write(&filler, vec![0u8; 3 << 20])?;
    let mut daemon = prepared.start().await?;
    let mut client = daemon.client();

    // Big jobs (60 labels of 1000 bytes) fill the rest in a few dozen.
    let mut big = exec_spec(["true"]);
    big.run_at = Some(quern_tests::timestamp(
        std::time::SystemTime::now() + std::time::Duration::from_secs(3600),
    ));
    for k in 0..60 {
        big.labels.insert(format!("k{k}"), "x".repeat(1000));
    }
    let mut acknowledged = Vec::new();
    let refusal = loop {
        ensure!(acknowledged.len() < 1000, "4 MiB never filled up");
        match client
            .submit(SubmitRequest {
                spec: Some(big.clone()),
            })
            .await
        {
            Ok(r) => acknowledged.push(r.into_inner().job.context("job")?.id),
            Err(status) => break status,
        }
    };
    ensure!(
        refusal.code() == Code::ResourceExhausted,
        "a full disk was answered {refusal:?}"
    );
    let state_name = state.display().to_string();
    ensure!(
        refusal.message().contains(&state_name) && refusal.message().contains("free"),
        "the refusal names neither the state dir nor the free space: {}",
        refusal.message()
    );
    // Reads go on.
    for id in &acknowledged {
        get(&mut client, *id).await?;
    }
    let listed = client
        .list(ListRequest {
            page_size: 5,
            ..Default::default()
        })
        .await?
        .into_inner();
    ensure!(listed.jobs.len() == 5, "{listed:?}");

    // Space freed: Submits succeed again, with no restart.
    std::fs::remove_file(&filler)?;
    client
        .submit(SubmitRequest {
            spec: Some(big.clone()),
        })
        .await
        .context("a Submit once space was freed")?;
    // And nothing acknowledged was lost, through a restart too.
    daemon.stop().await?;
    daemon.restart().await?;
    let mut client = daemon.client();
    for id in &acknowledged {
        let job = get(&mut client, *id).await?;
        ensure!(
            job.spec.context("spec")?.labels.len() == 60,
            "job {id} changed"
        );
    }
    Ok(())
}
