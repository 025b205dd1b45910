//! End-to-end tests of Submit and SubmitBatch: idempotency keys under
//! concurrency, and large batches.

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use anyhow::{Result, ensure};
use quern_proto::v1::jobs_client::JobsClient;
use quern_proto::v1::{ListRequest, SubmitBatchRequest, SubmitRequest};
use quern_tests::{TestDaemon, exec_spec, get, timestamp};
use tokio::task::JoinSet;
use tonic::transport::Channel;

/// Every job carrying `labels`, oldest first, across all pages.
async fn list_labelled(
    client: &mut JobsClient<Channel>,
    labels: HashMap<String, String>,
) -> Result<Vec<u64>> {
    let mut ids = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .list(ListRequest {
                labels: labels.clone(),
                page_size: 1000,
                page_token,
                oldest_first: true,
                ..ListRequest::default()
            })
            .await?
            .into_inner();
        ids.extend(page.jobs.iter().map(|j| j.id));
        if page.next_page_token.is_empty() {
            return Ok(ids);
        }
        page_token = page.next_page_token;
    }
}

/// 16 concurrent Submits with one idempotency key create exactly one job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_submits_with_one_key_create_one_job() -> Result<()> {
    let daemon = TestDaemon::start().await?;
    let mut spec = exec_spec(["true"]);
    // Kept unfinished for the whole test, so the key stays in force.
    spec.run_at = Some(timestamp(SystemTime::now() + Duration::from_secs(3600)));
    spec.idempotency_key = "the-one-key".into();
    spec.labels.insert("test".into(), "idempotency".into());

    let mut calls = JoinSet::new();
    for _ in 0..16 {
        // A client clone per task, so all 16 calls are in flight at once.
        let mut client = daemon.client();
        let spec = spec.clone();
        calls.spawn(async move { client.submit(SubmitRequest { spec: Some(spec) }).await });
    }
    let mut responses = Vec::new();
    while let Some(call) = calls.join_next().await {
        responses.push(call??.into_inner());
    }

    let ids: Vec<u64> = responses
        .iter()
        .filter_map(|r| r.job.as_ref().map(|j| j.id))
        .collect();
    ensure!(
        ids.len() == 16,
        "some responses carry no job: {responses:?}"
    );
    ensure!(
        ids.iter().all(|id| *id == ids[0]),
        "different ids for one key: {ids:?}"
    );
    let fresh = responses.iter().filter(|r| !r.deduplicated).count();
    ensure!(
        fresh == 1,
        "{fresh} responses say they created the job, expected exactly 1"
    );

    let mut client = daemon.client();
    let listed = list_labelled(&mut client, spec.labels.clone()).await?;
    ensure!(
        listed == [ids[0]],
        "List shows {listed:?}, expected only job {}",
        ids[0]
    );
    Ok(())
}

/// A batch of 1000 specs returns 1000 strictly increasing ids, all stored.
#[tokio::test]
async fn submit_batch_of_1000_stores_them_all() -> Result<()> {
    let daemon = TestDaemon::start().await?;
    let mut client = daemon.client();
    let mut spec = exec_spec(["true"]);
    // Delayed, so the test measures storing and not running 1000 processes.
    spec.run_at = Some(timestamp(SystemTime::now() + Duration::from_secs(3600)));
    spec.labels.insert("test".into(), "batch".into());
    let ids = client
        .submit_batch(SubmitBatchRequest {
            specs: vec![spec.clone(); 1000],
        })
        .await?
        .into_inner()
        .ids;
    ensure!(ids.len() == 1000, "{} ids for 1000 specs", ids.len());
    ensure!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "ids are not strictly increasing"
    );

    let listed = list_labelled(&mut client, spec.labels.clone()).await?;
    ensure!(
        listed == ids,
        "List shows {} jobs, not the 1000 ids returned",
        listed.len()
    );
    // List could be built from an index that drifted from the jobs, so read
    // a few of them directly too.
    for id in [ids[0], ids[499], ids[999]] {
        let job = get(&mut client, id).await?;
        ensure!(
            job.spec.as_ref().map(|s| &s.labels) == Some(&spec.labels),
            "job {id}: {job:?}"
        );
    }
    Ok(())
}

/// A job records the uid of the user whose connection submitted it, from
/// the socket's peer credentials; `quernctl get` shows it.
#[tokio::test]
async fn a_job_records_its_submitters_uid() -> Result<()> {
    let daemon = TestDaemon::start().await?;
    let mut client = daemon.client();
    let me = nix::unistd::getuid().as_raw();
    let job = client
        .submit(SubmitRequest {
            spec: Some(exec_spec(["true"])),
        })
        .await?
        .into_inner()
        .job
        .expect("a submitted job");
    ensure!(job.owner_uid == me, "owner {} is not {me}", job.owner_uid);
    ensure!(get(&mut client, job.id).await?.owner_uid == me);
    let ids = client
        .submit_batch(SubmitBatchRequest {
            specs: vec![exec_spec(["true"])],
        })
        .await?
        .into_inner()
        .ids;
    ensure!(get(&mut client, ids[0]).await?.owner_uid == me);

    let shown = tokio::process::Command::new(quern_tests::quernctl_bin())
        .arg("--socket")
        .arg(daemon.socket())
        .args(["get", &job.id.to_string()])
        .output()
        .await?;
    ensure!(shown.status.success(), "{shown:?}");
    let text = String::from_utf8(shown.stdout)?;
    let owner = text
        .lines()
        .find(|l| l.starts_with("owner"))
        .unwrap_or_default();
    ensure!(
        owner.split_whitespace().nth(1) == Some(me.to_string().as_str()),
        "quernctl get shows {owner:?}:\n{text}"
    );
    Ok(())
}
