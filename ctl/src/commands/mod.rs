//! One module per verb, and [`run`], which connects and dispatches to it.

mod cancel;
mod events;
mod follow;
mod get;
mod list;
mod logs;
mod prune;
mod result;
mod stats;
mod submit;
mod wait;
mod watch;

use anyhow::{Result, anyhow};
use quern_proto::v1::{GetRequest, Job};

use crate::cli::{Cli, Command, WatchCommand};
use crate::client::{self, Client, rpc_error};

/// Runs the verb on the command line against the daemon.
pub async fn run(cli: Cli) -> Result<()> {
    let socket = cli.socket.unwrap_or_else(quern_proto::default_socket_path);
    let json = cli.json;

    let connect = || client::connect(&socket);

    match cli.command {
        Command::Submit { kind } => {
            // Requests are built before connecting, so a bad flag is
            // reported as such even when the daemon is down.
            let spec = submit::spec(kind)?;
            submit::run(&mut connect().await?, spec, json).await
        }
        Command::Get { id } => get::run(&mut connect().await?, id, json).await,
        Command::Result { id, top } => result::run(&mut connect().await?, id, top, json).await,
        Command::Follow { id } => follow::run(&mut connect().await?, id, json).await,
        Command::List(args) => {
            let request = list::request(&args)?;
            list::run(&mut connect().await?, request, args.limit, json).await
        }
        Command::Cancel { id, grace } => cancel::run(&mut connect().await?, id, grace, json).await,
        Command::Wait { ids, timeout } => {
            wait::run(&mut connect().await?, &ids, timeout, json).await
        }
        Command::Logs { id, follow } => logs::run(&mut connect().await?, id, follow).await,
        Command::Events {
            job,
            after,
            progress,
            hosts,
            watches,
        } => {
            let request = events::request(job, after, progress, hosts, watches);
            events::run(&mut connect().await?, request, json).await
        }
        Command::Stats => stats::run(&mut connect().await?, json).await,
        Command::Prune {
            older_than,
            keep,
            dry_run,
        } => {
            let request = prune::request(older_than, keep, dry_run);
            prune::run(&mut connect().await?, request, json).await
        }
        Command::Watch { command } => {
            let connect = || client::connect_watches(&socket);
            match command {
                WatchCommand::Add(args) => {
                    let spec = watch::add_spec(args)?;
                    watch::add(&mut connect().await?, spec, json).await
                }
                WatchCommand::Ls => watch::ls(&mut connect().await?, json).await,
                WatchCommand::Get { id } => watch::get(&mut connect().await?, id, json).await,
                WatchCommand::Rm { id } => {
                    watch::change(&mut connect().await?, watch::Change::Remove, id, json).await
                }
                WatchCommand::Pause { id } => {
                    watch::change(&mut connect().await?, watch::Change::Pause, id, json).await
                }
                WatchCommand::Resume { id } => {
                    watch::change(&mut connect().await?, watch::Change::Resume, id, json).await
                }
            }
        }
    }
}

/// The job in a response, which the daemon always sets; its absence means a
/// daemon that does not speak this version of the API.
fn returned_job(job: Option<Job>, rpc: &str) -> Result<Job> {
    job.ok_or_else(|| {
        anyhow!("quernd answered {rpc} without a job; check that quernd and quernctl are the same version")
    })
}

/// Reads one job.
async fn get_job(client: &mut Client, id: u64) -> Result<Job> {
    let response = client
        .get(GetRequest { id })
        .await
        .map_err(rpc_error)?
        .into_inner();
    returned_job(response.job, "Get")
}
