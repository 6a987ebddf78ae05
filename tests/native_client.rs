//! The native client (`ondisk::client`), against real `ondisk` processes: it writes through
//! whichever node it is given by following the leader's redirects, reads with either consistency
//! from every node, and carries on after the leader is killed; its watches survive the loss of
//! their node, its transactions branch on their comparisons, and the leases it keeps alive
//! outlive a change of leader.

mod common;

use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::Duration;
use std::time::Instant;

use common::native::client_of;
use common::native::put_request;
use common::native::runtime;
use common::native::CLIENT_TIMEOUT;
use common::Cluster;
use ondisk::client::Client;
use ondisk::client::Consistency;
use ondisk::client::Watch;

#[test]
fn a_write_sent_to_a_follower_reaches_the_leader_and_every_node_reads_it() {
    let mut cluster = Cluster::start(3);
    let leader = cluster.wait_for_leader();
    let follower = cluster.followers(leader)[0];
    let runtime = runtime();

    let writer = client_of(&cluster, &[follower]);
    runtime
        .block_on(writer.put(put_request(
            b"greeting".to_vec(),
            b"hello\x00world".to_vec(),
        )))
        .expect("put through a follower");

    for id in cluster.ids() {
        let reader = client_of(&cluster, &[id]);
        let value = runtime
            .block_on(reader.get(b"greeting", Consistency::Linearizable))
            .expect("linearizable get");
        assert_eq!(value.as_deref(), Some(&b"hello\x00world"[..]), "node {id}");
    }
    cluster.assert_get(leader, "greeting", Some(b"hello\x00world"));

    runtime
        .block_on(writer.delete(b"greeting".to_vec()))
        .expect("delete");
    let everyone = client_of(&cluster, &cluster.ids());
    for _ in cluster.ids() {
        let value = runtime
            .block_on(everyone.get(b"greeting", Consistency::Linearizable))
            .expect("get after delete");
        assert_eq!(value, None);
    }
}

#[test]
fn stale_reads_answer_from_the_node_asked_and_catch_up_with_the_leader() {
    let mut cluster = Cluster::start(3);
    let leader = cluster.wait_for_leader();
    let runtime = runtime();
    let client = client_of(&cluster, &cluster.ids());
    runtime
        .block_on(client.put(put_request(b"k".to_vec(), b"v".to_vec())))
        .expect("put");

    for id in cluster.ids() {
        let reader = client_of(&cluster, &[id]);
        let seen = common::poll_until(CLIENT_TIMEOUT, || {
            let value = runtime
                .block_on(reader.get(b"k", Consistency::Stale))
                .ok()?;
            (value.as_deref() == Some(&b"v"[..])).then_some(())
        });
        assert!(
            seen.is_some(),
            "node {id} never applied the write (leader {leader})"
        );
    }
}

#[test]
fn the_client_finds_the_new_leader_after_the_old_one_is_killed() {
    let mut cluster = Cluster::start(3);
    let leader = cluster.wait_for_leader();
    let runtime = runtime();
    let client = client_of(&cluster, &cluster.ids());
    runtime
        .block_on(client.put(put_request(b"before".to_vec(), b"1".to_vec())))
        .expect("put before the kill");

    cluster.kill(leader);
    // The first write may go out on the connection to the killed leader before the client has
    // noticed it closed; the client then reports the outcome as unknown, never as a failure it
    // retried blindly. Writing the same value again is safe, so the test does.
    let written = common::poll_until(CLIENT_TIMEOUT, || {
        match runtime.block_on(client.put(put_request(b"after".to_vec(), b"2".to_vec()))) {
            Ok(_) => Some(Ok(())),
            Err(ondisk::Error::OutcomeUnknown { .. }) => None,
            Err(other) => Some(Err(other)),
        }
    });
    written
        .expect("a new leader within the deadline")
        .expect("put after the leader was killed");
    for key in ["before", "after"] {
        let value = runtime
            .block_on(client.get(key.as_bytes(), Consistency::Linearizable))
            .expect("get from the surviving majority");
        assert!(value.is_some(), "{key} lost");
    }
}

#[test]
fn a_client_with_no_reachable_node_gives_up_at_its_deadline() {
    let dead = common::free_addr().to_string();
    let client = Client::new(vec![dead], Duration::from_millis(500)).expect("a client");
    let runtime = runtime();
    let error = runtime
        .block_on(client.put(put_request(b"k".to_vec(), b"v".to_vec())))
        .expect_err("nobody to write to");
    assert!(error.to_string().contains("timed out"), "{error}");
    let error = runtime
        .block_on(client.get(b"k", Consistency::Linearizable))
        .expect_err("nobody to read from");
    assert!(error.to_string().contains("timed out"), "{error}");
    assert!(Client::new(Vec::new(), CLIENT_TIMEOUT).is_err());
}

/// Why `result` failed; panics if it did not.
fn refusal<T>(result: Result<T, ondisk::error::Error>) -> String {
    match result {
        Ok(_) => panic!("allowed"),
        Err(e) => e.to_string(),
    }
}

/// The events a watch delivers, as (key, revision), until `until` says enough; panics if the
/// watch fails, ends, or `until` is not reached within [`CLIENT_TIMEOUT`].
async fn watch_until(
    watch: &mut Watch<'_>,
    seen: &mut Vec<(Vec<u8>, i64)>,
    until: impl Fn(&[(Vec<u8>, i64)]) -> bool,
) {
    let collect = async {
        while !until(seen) {
            let response = watch
                .next()
                .await
                .expect("the watch goes on")
                .expect("the watch has not ended");
            assert!(!response.canceled, "watch canceled: {response:?}");
            assert!(
                !response.events.is_empty(),
                "a progress response nobody asked for: {response:?}"
            );
            seen.extend(
                response
                    .events
                    .into_iter()
                    .map(|event| (event.kv.key, event.kv.mod_revision)),
            );
        }
    };
    if tokio::time::timeout(CLIENT_TIMEOUT, collect).await.is_err() {
        panic!("the watch stalled after {} events: {seen:?}", seen.len());
    }
}

/// Writes `w/{i}` for each `i`, returning each key with the revision the cluster gave it.
async fn write_keys(client: &Client, keys: std::ops::Range<usize>) -> Vec<(Vec<u8>, i64)> {
    let mut written = Vec::new();
    for i in keys {
        let key = format!("w/{i:02}").into_bytes();
        let response = client
            .put(put_request(key.clone(), b"v".to_vec()))
            .await
            .unwrap_or_else(|e| panic!("put {i}: {e}"));
        written.push((key, response.header.revision));
    }
    written
}

#[test]
fn a_watch_resumes_on_another_node_when_its_node_is_killed_and_loses_or_repeats_no_event() {
    let mut cluster = Cluster::start(3);
    let leader = cluster.wait_for_leader();
    // The watch knows only the followers, so killing its node leaves the leader, and the writes,
    // undisturbed.
    let followers = cluster.followers(leader);
    let watcher = client_of(&cluster, &followers);
    let writer = client_of(&cluster, &cluster.ids());
    let runtime = runtime();
    runtime.block_on(async {
        let request = ondisk::api::WatchRequest {
            key: b"w/".to_vec(),
            range_end: ondisk::api::prefix_end(b"w/"),
            ..ondisk::api::WatchRequest::default()
        };
        let mut watch = watcher.watch(request).await.expect("a watch");
        let watched_addr = watch.endpoint().to_string();
        let watched = cluster
            .ids()
            .into_iter()
            .find(|&id| cluster.raft_addr(id).to_string() == watched_addr)
            .expect("the watch polls one of its endpoints");

        let mut written = write_keys(&writer, 0..10).await;
        let mut seen = Vec::new();
        watch_until(&mut watch, &mut seen, |seen| seen.len() >= 10).await;

        // The kill lands while the watch waits in a poll on the node; the writes after it can
        // only reach the watch through the other follower.
        let kill_and_write = async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            cluster.kill(watched);
            write_keys(&writer, 10..20).await
        };
        let ((), after) = tokio::join!(
            watch_until(&mut watch, &mut seen, |seen| seen.len() >= 20),
            kill_and_write
        );
        written.extend(after);
        assert_ne!(
            watch.endpoint(),
            watched_addr,
            "the watch stayed on the dead node"
        );

        // A last write closes the record: any event repeated after the 20th shows up before it.
        written.extend(write_keys(&writer, 20..21).await);
        let last = written[20].clone();
        watch_until(&mut watch, &mut seen, |seen| seen.contains(&last)).await;
        assert_eq!(seen, written, "events seen (left) vs writes made (right)");
        assert_eq!(watch.next_revision(), last.1 + 1);
    });
}

#[test]
fn a_transaction_runs_its_success_or_failure_branch_as_its_comparison_says() {
    use ondisk::api::Compare;
    use ondisk::api::CompareResult;
    use ondisk::api::CompareTarget;
    use ondisk::api::RequestOp;
    use ondisk::api::ResponseOp;

    let mut cluster = Cluster::start(3);
    cluster.wait_for_leader();
    let client = client_of(&cluster, &cluster.ids());
    let runtime = runtime();
    runtime.block_on(async {
        let put = client
            .put(put_request(b"color".to_vec(), b"red".to_vec()))
            .await
            .expect("put");
        let swap_red_for_blue = ondisk::api::TxnRequest {
            compare: vec![Compare {
                key: b"color".to_vec(),
                range_end: Vec::new(),
                target: CompareTarget::Value(b"red".to_vec()),
                result: CompareResult::Equal,
            }],
            success: vec![RequestOp::Put(put_request(
                b"color".to_vec(),
                b"blue".to_vec(),
            ))],
            failure: vec![RequestOp::Range(ondisk::api::RangeRequest {
                key: b"color".to_vec(),
                ..ondisk::api::RangeRequest::default()
            })],
        };

        let first = client.txn(swap_red_for_blue.clone()).await.expect("txn");
        assert!(first.succeeded, "{first:?}");
        assert!(
            matches!(first.responses[..], [ResponseOp::Put(_)]),
            "{first:?}"
        );
        assert_eq!(first.header.revision, put.header.revision + 1);

        let second = client.txn(swap_red_for_blue).await.expect("txn");
        assert!(!second.succeeded, "{second:?}");
        match &second.responses[..] {
            [ResponseOp::Range(range)] => {
                assert_eq!(range.kvs.len(), 1, "{range:?}");
                assert_eq!(range.kvs[0].value, b"blue");
                assert_eq!(range.kvs[0].mod_revision, first.header.revision);
            }
            other => panic!("the failure branch answered {other:?}"),
        }
        // A transaction that changes nothing does not move the revision.
        assert_eq!(second.header.revision, first.header.revision);

        let range = client
            .range(ondisk::api::RangeRequest {
                key: b"color".to_vec(),
                ..ondisk::api::RangeRequest::default()
            })
            .await
            .expect("range");
        assert_eq!(range.header.revision, first.header.revision);
        assert_eq!(range.kvs.len(), 1, "{range:?}");
        assert_eq!(range.kvs[0].value, b"blue");

        // A refusal comes back as the cluster's reason, at once.
        let on_unknown_lease = ondisk::api::PutRequest {
            lease: 424242,
            ..put_request(b"color".to_vec(), b"green".to_vec())
        };
        match client.put(on_unknown_lease).await {
            Err(ondisk::Error::Request(refusal)) => {
                assert!(refusal.to_string().contains("lease not found"), "{refusal}")
            }
            other => panic!("a put on an unknown lease answered {other:?}"),
        }
    });
}

#[test]
fn a_lease_kept_alive_by_the_client_outlives_the_leader_and_an_unkept_one_expires() {
    const TTL: Duration = Duration::from_secs(2);
    let mut cluster = Cluster::start(3);
    let leader = cluster.wait_for_leader();
    let client = client_of(&cluster, &cluster.ids());
    let runtime = runtime();
    let grant = ondisk::api::LeaseGrantRequest {
        ttl: TTL.as_secs() as i64,
        id: 0,
    };
    let (kept, unkept) = runtime.block_on(async {
        let kept = client.lease_grant(grant.clone()).await.expect("grant");
        let unkept = client.lease_grant(grant).await.expect("grant");
        for (key, lease) in [(b"kept", kept.id), (b"gone", unkept.id)] {
            let put = ondisk::api::PutRequest {
                lease,
                ..put_request(key.to_vec(), b"v".to_vec())
            };
            client.put(put).await.expect("put on a lease");
        }
        (kept.id, unkept.id)
    });

    // The keep-alives run on their own thread and client (a client's connections are driven by
    // the runtime that opened them), from before the kill until the end.
    let stop = AtomicBool::new(false);
    let failures = Mutex::new(Vec::new());
    let keeper = client_of(&cluster, &cluster.ids());
    std::thread::scope(|scope| {
        scope.spawn(|| {
            common::native::runtime().block_on(async {
                while !stop.load(Ordering::SeqCst) {
                    if let Err(e) = keeper.lease_keep_alive(kept).await {
                        failures.lock().unwrap().push(e.to_string());
                    }
                    tokio::time::sleep(TTL / 4).await;
                }
            })
        });

        cluster.kill(leader);
        let new_leader = cluster.wait_for_leader();
        assert_ne!(new_leader, leader);
        // From the election on, the new leader counts every lease afresh: the unkept one must
        // expire, the kept one must still be there two TTLs later.
        let elected = Instant::now();
        let outcome = common::poll_until(CLIENT_TIMEOUT, || {
            let kept_value = runtime
                .block_on(client.get(b"kept", Consistency::Linearizable))
                .expect("get");
            assert!(
                kept_value.is_some(),
                "the kept lease's key vanished {:?} after the election",
                elected.elapsed()
            );
            let gone = runtime
                .block_on(client.get(b"gone", Consistency::Linearizable))
                .expect("get");
            (gone.is_none() && elected.elapsed() >= 2 * TTL).then_some(())
        });
        stop.store(true, Ordering::SeqCst);
        assert!(outcome.is_some(), "the unkept lease never expired");
    });
    assert_eq!(failures.into_inner().unwrap(), Vec::<String>::new());

    runtime.block_on(async {
        let ttl = client
            .lease_time_to_live(kept, true)
            .await
            .expect("time to live");
        assert!(ttl.ttl > 0, "{ttl:?}");
        assert_eq!(ttl.keys, vec![b"kept".to_vec()]);
        let leases = client.leases().await.expect("leases");
        let ids: Vec<i64> = leases.leases.iter().map(|lease| lease.id).collect();
        assert!(ids.contains(&kept) && !ids.contains(&unkept), "{ids:?}");
        match client.lease_keep_alive(unkept).await {
            Err(ondisk::Error::Request(_)) => {}
            other => panic!("a keep-alive of an expired lease answered {other:?}"),
        }
    });
}

#[test]
fn a_native_client_acting_as_a_user_reaches_only_the_keys_its_roles_cover() {
    let mut cluster = Cluster::start(3);
    cluster.wait_for_leader();
    let base = format!("http://{}", cluster.http_addr(1));
    common::http::enable_auth_with_app_user(&base);
    let runtime = runtime();
    let app = client_of(&cluster, &cluster.ids()).as_user("app", "apppw");
    runtime
        .block_on(app.put(put_request(b"app/a".to_vec(), b"1".to_vec())))
        .expect("a put inside the user's prefix");
    let value = runtime
        .block_on(app.get(b"app/a", Consistency::Linearizable))
        .expect("a get inside the user's prefix");
    assert_eq!(value.as_deref(), Some(&b"1"[..]));

    let outside = refusal(runtime.block_on(app.put(put_request(b"x".to_vec(), b"1".to_vec()))));
    assert!(outside.contains("permission denied"), "{outside}");
    // A stale read is answered by whichever node it reaches, with the auth state that node has
    // applied: every node must have applied authentication's switch first.
    let leader = cluster.wait_for_leader();
    common::http::wait_applied_everywhere(&cluster, leader);
    let outside = refusal(runtime.block_on(app.get(b"x", Consistency::Stale)));
    assert!(outside.contains("permission denied"), "{outside}");
    let watch_outside = ondisk::api::WatchRequest {
        key: b"x".to_vec(),
        ..ondisk::api::WatchRequest::default()
    };
    let outside = runtime.block_on(async {
        let mut watch = app.watch(watch_outside).await?;
        watch.next().await
    });
    assert!(refusal(outside).contains("permission denied"));

    // Without a user, a raft-port client is trusted as the members it shares the port with
    // are: the port's authentication is the peer certificate (TLS), not a user.
    let member = client_of(&cluster, &[2]);
    let value = runtime.block_on(member.get(b"app/a", Consistency::Linearizable));
    assert_eq!(value.expect("a member's read").as_deref(), Some(&b"1"[..]));
    let wrong = client_of(&cluster, &[3]).as_user("app", "wrong");
    let refused = refusal(runtime.block_on(wrong.get(b"app/a", Consistency::Linearizable)));
    assert!(refused.contains("authentication failed"), "{refused}");
}
