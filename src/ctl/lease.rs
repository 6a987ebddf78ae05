//! `ondisk ctl lease`: grant, keep alive, revoke and inspect leases, and the keep-alive loop the
//! lock and election recipes run in the background.

use std::thread;
use std::time::Duration;
use std::time::Instant;

use clap::Subcommand;

use crate::api;
use crate::api::LeaseKeepAliveResponse;

use super::done;
use super::print_json;
use super::Client;
use super::CtlError;
use super::Result;

/// The shortest pause between keep-alives, however short the TTL.
const MIN_RENEW_EVERY: Duration = Duration::from_millis(100);
/// Pause before trying a failed keep-alive again.
const RETRY_PAUSE: Duration = Duration::from_millis(200);

/// What `ondisk ctl lease` can do.
#[derive(Debug, Subcommand)]
pub enum LeaseCommand {
    /// Create a lease of TTL seconds and print its id (raised to the cluster's minimum, about
    /// one and a half election timeouts).
    Grant {
        /// Seconds the lease lives unless kept alive.
        ttl: i64,
    },
    /// Renew lease ID every third of its TTL, printing the TTL each time, until interrupted.
    KeepAlive {
        id: i64,
        /// Renew once and exit.
        #[arg(long)]
        once: bool,
    },
    /// End lease ID now, deleting every key attached to it.
    Revoke { id: i64 },
    /// Print lease ID's granted and remaining TTL.
    Ttl {
        id: i64,
        /// List the keys attached to it as well.
        #[arg(long)]
        keys: bool,
    },
    /// List the ids of every lease in force.
    List,
}

/// Runs one `lease` command.
pub(super) fn run(
    client: &Client,
    command: LeaseCommand,
    json: bool,
    timeout: Duration,
) -> Result<()> {
    match command {
        LeaseCommand::Grant { ttl } => {
            let answer = grant(client, ttl)?;
            if json {
                return print_json(&answer);
            }
            println!("lease {} granted with TTL({}s)", answer.id, answer.ttl);
            Ok(())
        }
        LeaseCommand::KeepAlive { id, once } => keep_alive(
            client,
            id,
            timeout,
            |answer| {
                if json {
                    print_json(answer)?;
                } else {
                    println!("lease {} keepalived with TTL({})", answer.id, answer.ttl);
                }
                Ok(!once)
            },
            |pause| {
                thread::sleep(pause);
                true
            },
        ),
        LeaseCommand::Revoke { id } => {
            revoke(client, id)?;
            done(json, &format!("lease {id} revoked"))
        }
        LeaseCommand::Ttl { id, keys } => {
            let mut path = api::http::lease(id);
            if keys {
                path.push_str(&format!("?{}=true", api::http::param::KEYS));
            }
            let answer: api::LeaseTimeToLiveResponse = client.get(&path)?;
            if json {
                return print_json(&answer);
            }
            let mut line = format!(
                "lease {} granted with TTL({}s), remaining({}s)",
                answer.id, answer.granted_ttl, answer.ttl
            );
            if keys {
                let names: Vec<String> = answer
                    .keys
                    .iter()
                    .map(|key| String::from_utf8_lossy(key).into_owned())
                    .collect();
                line.push_str(&format!(", attached keys([{}])", names.join(" ")));
            }
            println!("{line}");
            Ok(())
        }
        LeaseCommand::List => {
            let answer: api::LeaseLeasesResponse = client.get(api::http::LEASES)?;
            if json {
                return print_json(&answer);
            }
            println!("found {} leases", answer.leases.len());
            for lease in &answer.leases {
                println!("{}", lease.id);
            }
            Ok(())
        }
    }
}

/// Creates a lease of `ttl` seconds with an id the cluster chooses.
pub(super) fn grant(client: &Client, ttl: i64) -> Result<api::LeaseGrantResponse> {
    let request = api::LeaseGrantRequest { ttl, id: 0 };
    client.send_json("POST", api::http::LEASES, &request)
}

/// Ends lease `id`, deleting its keys.
pub(super) fn revoke(client: &Client, id: i64) -> Result<()> {
    client.call("DELETE", &api::http::lease(id), b"")?;
    Ok(())
}

/// Renews lease `id` until `renewed` (told each answer) or `pause` (given the time to wait before
/// the next renewal, a third of the TTL) returns false. A renewal that fails is tried again until
/// the lease would have expired (`timeout` before the first), so a leader change or one node's
/// death does not end it; a lease that is gone ends the loop with an error.
pub(super) fn keep_alive(
    client: &Client,
    id: i64,
    timeout: Duration,
    mut renewed: impl FnMut(&LeaseKeepAliveResponse) -> Result<bool>,
    mut pause: impl FnMut(Duration) -> bool,
) -> Result<()> {
    let mut give_up_at = Instant::now() + timeout;
    loop {
        let wait = match client
            .call("POST", &api::http::keep_alive(id), b"")
            .and_then(|answer| answer.parse::<LeaseKeepAliveResponse>())
        {
            Ok(answer) => {
                if !renewed(&answer)? {
                    return Ok(());
                }
                let ttl = Duration::from_secs(u64::try_from(answer.ttl).unwrap_or(0));
                give_up_at = Instant::now() + ttl;
                (ttl / 3).max(MIN_RENEW_EVERY)
            }
            Err(CtlError::NotFound(_)) => {
                return Err(CtlError::NotFound(format!(
                    "lease {id} not found (it expired or was revoked)"
                )))
            }
            Err(e) if Instant::now() >= give_up_at => return Err(e),
            Err(_) => RETRY_PAUSE,
        };
        if !pause(wait) {
            return Ok(());
        }
    }
}
