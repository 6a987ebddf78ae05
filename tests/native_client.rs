//! The native client (`ondisk::client`), against real `ondisk` processes: it writes through
//! whichever node it is given by following the leader's redirects, reads with either consistency
//! from every node, and carries on after the leader is killed.

mod common;

use std::time::Duration;

use common::native::client_of;
use common::native::runtime;
use common::native::CLIENT_TIMEOUT;
use common::Cluster;
use ondisk::client::Client;
use ondisk::client::Consistency;

#[test]
fn a_write_sent_to_a_follower_reaches_the_leader_and_every_node_reads_it() {
    let mut cluster = Cluster::start(3);
    let leader = cluster.wait_for_leader();
    let follower = cluster.followers(leader)[0];
    let runtime = runtime();

    let writer = client_of(&cluster, &[follower]);
    runtime
        .block_on(writer.put(b"greeting".to_vec(), b"hello\x00world".to_vec()))
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
        .block_on(client.put(b"k".to_vec(), b"v".to_vec()))
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
        .block_on(client.put(b"before".to_vec(), b"1".to_vec()))
        .expect("put before the kill");

    cluster.kill(leader);
    // The first write may go out on the connection to the killed leader before the client has
    // noticed it closed; the client then reports the outcome as unknown, never as a failure it
    // retried blindly. Writing the same value again is safe, so the test does.
    let written = common::poll_until(CLIENT_TIMEOUT, || {
        match runtime.block_on(client.put(b"after".to_vec(), b"2".to_vec())) {
            Ok(()) => Some(Ok(())),
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
        .block_on(client.put(b"k".to_vec(), b"v".to_vec()))
        .expect_err("nobody to write to");
    assert!(error.to_string().contains("timed out"), "{error}");
    let error = runtime
        .block_on(client.get(b"k", Consistency::Linearizable))
        .expect_err("nobody to read from");
    assert!(error.to_string().contains("timed out"), "{error}");
    assert!(Client::new(Vec::new(), CLIENT_TIMEOUT).is_err());
}
